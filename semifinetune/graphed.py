"""The training step as one CUDA graph: forward, loss and backward recorded once over static shapes, then replayed.

At the recipe's sizes (4 rows of ~250 tokens) a step of a 4-bit 1.5B model is host-bound: Python launches
thousands of small kernels (dequantize, LoRA, norms, rotary) and the GPU waits for them. A replayed graph
launches them all at once. Everything else is the Trainer's own: data order, optimizer, schedule, gradient
clipping, logging, evaluation and checkpoints. The loss is SFTTrainer's: the summed cross-entropy of the loss
tokens divided by their count, computed in chunks so the (tokens x vocabulary) logits never exist in full.

Static shapes: every batch is right-padded to one length (the longest training example). Without an attention
mask, causal attention already keeps real tokens from seeing the right padding, and padded labels carry no loss.
"""

from __future__ import annotations

import functools

LOSS_CHUNK_ROWS = 64  # logits of 64 positions x a 152k vocabulary: 39 MB in fp32 at a time (peak memory counts)


def chunked_lm_loss(hidden, weight, labels, chunk_rows: int = LOSS_CHUNK_ROWS):
    """Summed next-token cross-entropy of `hidden` (N, H) through the LM head `weight` (V, H) against `labels` (N,),
    -100 ignored. The gradient for `hidden` is computed chunk by chunk in the forward pass (the head is frozen)."""
    return _chunked_lm_loss_function().apply(hidden, weight, labels, chunk_rows)


@functools.cache
def _chunked_lm_loss_function():
    """The autograd Function, built on first use so that importing this module does not import torch."""
    import torch

    class ChunkedLMLoss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, labels, chunk_rows):
            total = torch.zeros((), device=hidden.device, dtype=torch.float32)
            grad_hidden = torch.empty_like(hidden)
            for start in range(0, hidden.shape[0], chunk_rows):
                rows = slice(start, start + chunk_rows)
                target = labels[rows]
                valid = (target != -100).unsqueeze(1)
                picked = target.clamp(min=0).unsqueeze(1)
                logits = (hidden[rows] @ weight.t()).float()
                log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
                total += ((log_norm - logits.gather(1, picked)) * valid).sum()
                # d(loss)/d(logits) = softmax - one_hot, zero on ignored rows; computed in the logits' own memory
                grad_logits = logits.sub_(log_norm).exp_()
                grad_logits.scatter_add_(1, picked, -torch.ones_like(picked, dtype=grad_logits.dtype))
                grad_logits.mul_(valid)
                grad_hidden[rows] = grad_logits.to(weight.dtype) @ weight
            ctx.save_for_backward(grad_hidden)
            return total

        @staticmethod
        def backward(ctx, grad_total):
            (grad_hidden,) = ctx.saved_tensors
            return grad_hidden * grad_total.to(grad_hidden.dtype), None, None, None

    return ChunkedLMLoss


def static_step_loss(model, input_ids, labels):
    """Mean next-token loss over the labelled tokens of right-padded rows, as SFTTrainer computes it, without
    an attention mask and without the full logits (the forward the graph records)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=input_ids, use_cache=False).last_hidden_state
    flat_hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    flat_labels = labels[:, 1:].reshape(-1)
    count = (flat_labels != -100).sum().clamp(min=1)
    return chunked_lm_loss(flat_hidden, base.lm_head.weight, flat_labels) / count


def why_not_graphed(trainer) -> str | None:
    """None where the training step can be recorded as a CUDA graph, else the reason it runs as usual."""
    import torch

    args = trainer.args
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if getattr(trainer.model, "semifinetune_backend", "transformers") != "transformers":
        return "the Unsloth backend has its own kernels and checkpointing"
    if args.gradient_accumulation_steps != 1:
        return "gradient accumulation (the graph writes each step's gradients, it does not add them up)"
    if args.world_size != 1:
        return "data parallel (gradients are averaged across processes outside the model)"
    return None


def graphed_trainer_class(base, static_length: int, pad_token_id: int):
    """`base` (an SFTTrainer class) whose training step replays a CUDA graph over rows of `static_length` tokens.

    Falls back to the usual step, with one printed line saying why, where the graph does not apply or a batch
    is longer than `static_length`.
    """
    import torch

    class GraphedStepTrainer(base):
        _graph = None  # None: not recorded yet; False: not used in this run
        _warned: set = set()

        def training_step(self, model, inputs, num_items_in_batch=None):
            reason = "recording failed earlier" if self._graph is False else self._why_not_graphed()
            if reason is None and inputs["input_ids"].shape[1] > static_length:
                reason = f"a batch of {inputs['input_ids'].shape[1]} tokens is longer than {static_length}"
            if reason is not None:
                self._say_once(f"training step not CUDA-graphed: {reason}")
                return super().training_step(model, inputs, num_items_in_batch)
            if not model.training:  # after an evaluation; train() walks every module, ~15 ms a step on R1-1.5B
                model.train()
            inputs = self._prepare_inputs(inputs)
            self._load_static(inputs["input_ids"], inputs["labels"])
            if self._graph is None:
                try:
                    self._record(model)
                except RuntimeError as error:
                    self._graph = False
                    self._say_once(f"training step not CUDA-graphed: recording failed ({str(error).splitlines()[0]})")
                    torch.cuda.synchronize()
                    for param in self._params:
                        param.grad = None
                    return super().training_step(model, inputs, num_items_in_batch)
            self._graph.replay()
            # The Trainer sets .grad to None after each optimizer step; the graph keeps writing the same tensors.
            for param, grad in zip(self._params, self._grads):
                param.grad = grad
            return self._loss.detach().clone()

        def floating_point_ops(self, inputs):
            """The Trainer's FLOP count (6 x parameters x tokens), with the parameter count taken once: counting
            them walks every module, ~17 ms a step on R1-1.5B."""
            if getattr(self, "_parameter_count", None) is None:
                self._parameter_count = self.model.num_parameters(exclude_embeddings=True)
            return 6 * inputs["input_ids"].numel() * self._parameter_count

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            """Held-out loss through the same chunked loss (no full logits, no TRL Triton kernel to compile)."""
            if not prediction_loss_only or self._why_not_graphed() is not None:
                return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self._autocast():
                loss = static_step_loss(model, inputs["input_ids"], inputs["labels"])
            return loss.detach(), None, None

        def _why_not_graphed(self) -> str | None:
            """why_not_graphed, taken once: machine, backend and process count do not change during a run."""
            if not hasattr(self, "_reason"):
                self._reason = why_not_graphed(self)
            return self._reason

        def _autocast(self):
            dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
            # cache_enabled=False: autocast's weight-cast cache cannot live across graph replays
            return torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=False)

        def _load_static(self, input_ids, labels):
            if getattr(self, "_ids", None) is None:
                rows = self.args.per_device_train_batch_size
                self._ids = torch.full((rows, static_length), pad_token_id, dtype=torch.long, device=input_ids.device)
                self._labels = torch.full((rows, static_length), -100, dtype=torch.long, device=input_ids.device)
            self._ids.fill_(pad_token_id)
            self._labels.fill_(-100)
            batch, length = input_ids.shape
            self._ids[:batch, :length].copy_(input_ids)
            self._labels[:batch, :length].copy_(labels)

        def _forward_backward(self, model):
            with self._autocast():
                loss = static_step_loss(model, self._ids, self._labels)
            scaler = getattr(self.accelerator, "scaler", None)
            # fp16: scale by the GradScaler's own scale tensor, which it updates in place between replays
            (loss * scaler._scale if scaler is not None else loss).backward()
            return loss

        def _record(self, model):
            self._params = [p for p in model.parameters() if p.requires_grad]
            scaler = getattr(self.accelerator, "scaler", None)
            if scaler is not None:
                scaler.scale(torch.ones((), device=self._ids.device))  # creates its scale tensor
            # Cached blocks of the usual pool are freed before and after: the graph keeps its own pool, and peak
            # memory would otherwise hold both.
            torch.cuda.empty_cache()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the graph: kernels picked, workspaces allocated
                self._forward_backward(model)
            torch.cuda.current_stream().wait_stream(side)
            for param in self._params:
                param.grad = None  # recorded backward then writes fresh gradient tensors instead of adding
            torch.cuda.empty_cache()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._loss = self._forward_backward(model)
            self._grads = [p.grad for p in self._params]
            self._graph = graph
            print(f"training step recorded as a CUDA graph ({static_length} tokens x {self._ids.shape[0]} rows)", flush=True)

        def _say_once(self, message: str):
            if message not in self._warned:
                self._warned.add(message)
                print(message, flush=True)

    return GraphedStepTrainer
