"""The validation check that chooses the checkpoint: the model answers the validation questions at each evaluation.

Why answers, not the loss: on the embedded model the validation loss bottoms out after 40-60 steps while the
answers keep getting right for longer (benchmarks/study_recipes.py: every candidate kept step 40 or 60 by the loss,
and its kept weights answered fewer held-out questions than the last step's). The loss also punishes a right answer
in other words. The check is greedy (no sampling noise between checkpoints) and scores answers the way the
held-out evaluation does (keyword groups where the questions have them, else the reference answers' key terms), on
questions that are never reported.
"""

from __future__ import annotations

# What chooses: the mean recall (of keyword groups, or of key terms) over the validation questions, ties (common: 44 questions move it in steps of
# 1/44) going to the lower validation loss, which moves it by at most 0.004, a fifth of one question.
VALIDATION_METRIC = "eval_validation_score"
LOSS_TIE_BREAK = 1e-3


def validation_callback(cfg, run_dir, tokenizer):
    """A TrainerCallback that adds validation recall, correct count and score to the metrics of each evaluation on
    the validation set, before the trainer compares checkpoints and early stopping reads them."""
    from transformers import TrainerCallback

    from .data import read_prepared
    from .evaluate import score_generations
    from .generate import SamplingSettings, generate

    rows = read_prepared(run_dir, "validation")
    greedy = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=cfg.max_new_tokens)

    class ValidationRecall(TrainerCallback):
        def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
            if metrics is None or "eval_loss" not in metrics:  # the held-out pass after training: not a check
                return
            if state.global_step == 0:  # before training: no checkpoint to choose, and the base model's answers cost time
                return
            # The graphed decoding loop, as the evaluation decodes: its graphs and the dequantized copy live for the
            # call only (the eager path took a minute a check for 44 answers of R1 on an H200).
            answers = generate(model, tokenizer, [row["input"] for row in rows], greedy, cfg.seed, progress=False,
                               cuda_graphs=cfg.cuda_graphs)
            if getattr(model, "semifinetune_backend", "transformers") == "unsloth":
                from unsloth import FastLanguageModel

                FastLanguageModel.for_training(model)  # generate() switched it to Unsloth's inference path
            table = score_generations(answers, rows)
            recall = round(float(table["recall"].mean()), 4)
            found = {"eval_validation_recall": recall, "eval_validation_correct": int(table["correct"].sum()),
                     VALIDATION_METRIC: recall - LOSS_TIE_BREAK * metrics["eval_loss"]}
            metrics.update(found)  # the dict the trainer then reads for the best checkpoint and early stopping
            if state.log_history and state.log_history[-1].get("eval_loss") == metrics["eval_loss"]:
                state.log_history[-1].update(found)  # the evaluation's own log line, written just before

    return ValidationRecall()
