"""Sampling with a temperature and top_p per row, and a decoding loop over a static KV cache.

Per-row settings let one batch hold a whole sweep grid (every temperature x top_p x sample), so the GPU decodes
many rows per step instead of one setting's few. The warping is transformers' own, row by row:
TemperatureLogitsWarper, then TopPLogitsWarper (keep the smallest set of tokens whose probability reaches top_p,
at least one), then a draw from what they keep; temperature 0 is greedy.

`StaticDecoder` is transformers' `generate()` for left-padded prompts (same positions, same masking, same
sampling), written over a StaticCache so that every decoding step has the same shapes: on CUDA the step is
recorded as a CUDA graph and replayed, which removes the per-token launch overhead of a 4-bit model; the batches of
one generate() call share the cache and the recording (`static_decode`: one batch). Attention
reads the filled part of the cache, in lengths of KV_BUCKET slots (one graph each), through
decode_attention.grouped_attention; on Ampere and later GPUs through attention_kernel, which reads each row from its
first slot to the step's own (one graph for every length).
transformers 5.17's static cache layers write where their own counter (`cumulative_length`) points and ignore
`cache_position`; each step sets that counter to its slot first, so the warm-up run before recording and every
replay write the slot the mask expects, and each batch's prefill sets it back to 0. (The fused layers' rotary
kernel writes a step's keys and values at `cache_position` itself.)
dense_weights.dequantized_weights lets the 4-bit layers compute from a 16-bit copy while decoding, the LoRA adapter
folded in, where GPU memory allows. On Ampere and later GPUs the decoder layers run their norms, rotary and SiLU x up
as Triton kernels (fused_layers), and a batch of SAMPLE_KERNEL_ROWS rows or more draws its tokens through
sample_kernel's Triton kernels (two reads of the logits, no wait for the GPU).
"""

from __future__ import annotations

import functools
import importlib.util

from .decode_attention import decode_attention
from .fused_layers import causal_lm, fused_layers

FINISHED_CHECK_EVERY = 16  # decoding steps between checks that every row has ended (each check waits for the GPU)
TOP_P_CANDIDATES = 1024  # the most likely tokens per row among which top_p looks for its cut before sorting all
MAX_DRAWS = 8  # draws per row before sample_next takes the token from the cut distribution
# A batch's prompts run once each where its distinct rows are at most this share of its rows (a sweep repeats each
# prompt in its settings x samples rows)
DISTINCT_PROMPTS_SHARE = 0.5
KV_BUCKET = 64  # attention reads the cache up to the filled slots rounded up to this; one CUDA graph per length
# sample_kernel's draw against torch's, per step on an H100 (BENCHMARKS.md): 0.39-0.41 vs 0.96-1.24 ms at 64 rows,
# 0.32 vs 4.41 at 822
SAMPLE_KERNEL_ROWS = 64
# causal LMs whose forward returns lm_head(hidden states) unchanged: the step's head may write into its output
PLAIN_HEAD_MODELS = {"Qwen2ForCausalLM", "LlamaForCausalLM"}
KERNEL_CAPABILITY = (8, 0)  # Triton supports Ampere and later; a T4 (7.5) keeps transformers' layers and torch's draw


def warp_scores(logits, temperature, top_p):
    """Float32 scores of `logits` (B, V) after each row's temperature and top_p; -inf where a token is cut.

    Rows with temperature 0 keep only their argmax (greedy), so a draw returns it.
    """
    import torch

    scores = logits.float()
    greedy = temperature <= 0
    scores = scores / torch.where(greedy, 1.0, temperature).unsqueeze(1)
    remove = _top_p_removed(scores, torch.where(greedy, 1.0, top_p))  # a greedy row's cut comes below
    argmax = torch.zeros_like(remove).scatter_(1, scores.argmax(dim=-1, keepdim=True), True)
    remove = torch.where(greedy.unsqueeze(1), ~argmax, remove)
    return scores.masked_fill(remove, float("-inf"))


def _top_p_removed(scores, top_p, candidates: int = TOP_P_CANDIDATES):
    """(B, V) True where top_p cuts a token: TopPLogitsWarper's rule without sorting the vocabulary where avoidable.

    A token stays when the tokens more likely than it hold less than top_p of the probability (the most likely always
    stays). That cut is found among each row's `candidates` most likely tokens when they hold top_p or more; else the
    whole batch is sorted, as the warper does. Rows with top_p 1 cut nothing. Tokens tied with the last kept one all
    stay (the warper's sort keeps an arbitrary part of a tie).
    """
    keep_all = top_p >= 1
    top = scores.topk(min(candidates, scores.shape[-1]), dim=-1)
    probs = (top.values - scores.logsumexp(dim=-1, keepdim=True)).exp()
    covered = keep_all | (probs.sum(dim=-1) >= top_p)
    if not bool(covered.all()):
        return _top_p_removed_by_sorting(scores, top_p)
    kept = (probs.cumsum(dim=-1) - probs) < top_p.unsqueeze(1)
    kept[:, 0] = True
    last_kept = top.values.masked_fill(~kept, float("inf")).amin(dim=-1, keepdim=True)
    return (scores < last_kept) & ~keep_all.unsqueeze(1)


def _top_p_removed_by_sorting(scores, top_p):
    """TopPLogitsWarper's cut over the sorted vocabulary."""
    sorted_scores, sorted_ids = scores.sort(descending=False, dim=-1)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p).unsqueeze(1)
    remove_sorted[:, -1] = False  # the most likely token always stays
    return remove_sorted.scatter(1, sorted_ids, remove_sorted)


def sample_next(logits, temperature, top_p, generator=None, seed: int | None = None):
    """One token per row from warp_scores' distribution, without cutting the vocabulary at every step.

    Each row draws from its whole tempered distribution, as torch.multinomial draws one sample (the argmax of p / q,
    one q ~ Exp(1) per token; without multinomial's finiteness check, which waits for the GPU), and keeps the token
    where top_p keeps it: the tokens more likely than it hold less than top_p (warp_scores' rule). Rows whose token
    top_p cuts draw again. A kept draw follows the tempered distribution restricted to top_p's tokens, which is
    warp_scores' distribution; each draw is kept with probability top_p or more, so few rows draw twice. Rows still
    without a token after MAX_DRAWS draws take one from warp_scores itself (same distribution). Greedy rows
    (temperature 0) take the argmax. The cut by sorting the vocabulary cost 13 ms of a 29 ms step at 822 rows on an
    H200 where a distribution is flat (BENCHMARKS.md).

    With a `seed` (where kernels_usable), sample_kernel draws the same distribution in two reads of the logits, with
    noise of its own, and without waiting for the GPU.
    """
    import torch

    if seed is not None:
        from . import sample_kernel

        return sample_kernel.draw(logits, temperature, top_p, seed)[0]

    greedy = temperature <= 0
    probs = (logits.float() / torch.where(greedy, 1.0, temperature).unsqueeze(1)).softmax(dim=-1)
    drawn, kept = _draw(probs, top_p, generator)
    chosen = torch.where(greedy, logits.argmax(dim=-1), drawn)
    pending = ~(greedy | kept)
    for _ in range(MAX_DRAWS - 1):
        if not bool(pending.any()):
            return chosen
        rows = pending.nonzero().squeeze(1)
        chosen[rows], kept = _draw(probs[rows], top_p[rows], generator)
        pending[rows] = ~kept
    if bool(pending.any()):
        rows = pending.nonzero().squeeze(1)
        warped = warp_scores(logits[rows], temperature[rows], top_p[rows]).softmax(dim=-1)
        chosen[rows] = _draw(warped, top_p[rows], generator)[0]  # every token of the cut distribution is kept
    return chosen


def _draw(probs, top_p, generator=None):
    """(token per row drawn from probs, whether top_p keeps it: the more likely tokens hold less than top_p)."""
    import torch

    noise = torch.empty_like(probs).exponential_(1, generator=generator)
    drawn = torch.div(probs, noise, out=noise).argmax(dim=-1, keepdim=True)
    more_likely = torch.where(probs > probs.gather(1, drawn), probs, 0.0).sum(dim=-1)
    return drawn.squeeze(1), (more_likely < top_p) | (top_p >= 1)


def row_sampling_processor(temperatures: list[float], top_ps: list[float]):
    """A transformers LogitsProcessor applying warp_scores with these per-row settings inside `generate()`."""
    import torch
    from transformers import LogitsProcessor

    class RowSampling(LogitsProcessor):
        settings = None  # (temperature, top_p) tensors on the scores' device, made on the first token

        def __call__(self, input_ids, scores):
            if self.settings is None:
                self.settings = [torch.tensor(v, device=scores.device, dtype=torch.float32) for v in (temperatures, top_ps)]
            return warp_scores(scores, *self.settings)

    return RowSampling()


def static_decode(model, input_ids, attention_mask, temperatures, top_ps, max_new_tokens: int, eos_ids, pad_id: int,
                  cuda_graph: bool = True, streamer=None):
    """New token ids (B, max_new_tokens) for one batch of left-padded prompts: StaticDecoder sized to it, once."""
    rows, prompt_len = input_ids.shape
    decoder = StaticDecoder(model, rows, prompt_len, max_new_tokens, cuda_graph)
    return decoder.decode(input_ids, attention_mask, temperatures, top_ps, eos_ids, pad_id, streamer)


class StaticDecoder:
    """transformers' generate() for batches of left-padded prompts over one static KV cache, its step recorded as CUDA
    graphs once and replayed for every batch that fits: at most `rows` rows, `max_new_tokens` new tokens, prompt and
    answer within the cache's slots. A generate() call's batches share one decoder, so a sweep records its graphs
    once per model instead of once per batch (recording costs time and, on an H200, sometimes failed in a later
    batch). Everything the recorded step reads that differs between batches (the prompt length, each row's prompt
    slots and token count) lives in tensors it rewrites; a batch of fewer rows is filled up with rows of padding,
    which are never sampled, so a row draws what it would draw in a decoder sized to its batch.
    """

    def __init__(self, model, rows: int, prompt_len: int, max_new_tokens: int, cuda_graph: bool = True):
        import torch
        from transformers import StaticCache

        self.model, self.rows, self.max_new_tokens = model, rows, max_new_tokens
        self.device = model.device
        self.total = -(-(prompt_len + max_new_tokens) // KV_BUCKET) * KV_BUCKET  # every attention length a whole bucket
        self.dtype = model.get_input_embeddings().weight.dtype  # what attention computes in (not the fp32 adapters')
        self.min_value = torch.finfo(self.dtype).min
        self.cache = StaticCache(config=model.config, max_cache_len=self.total)
        long = dict(dtype=torch.long, device=self.device)
        self.slots = torch.arange(self.total, device=self.device)
        self.prompt_len = torch.zeros(1, **long)  # this batch's padded prompt length
        self.prompt_slots = torch.zeros((rows, self.total), dtype=torch.bool, device=self.device)
        self.real_tokens = torch.zeros((rows, 1), **long)
        self.token = torch.zeros((rows, 1), **long)
        self.cache_position = torch.zeros(1, **long)
        # attention_kernel's prompt_rows: where each row's slots start (after its prompt's left padding), and where rows
        # repeat a prompt, the first row holding it, whose copy of the prompt's slots they read (the same values)
        self.first_slot = torch.zeros(rows, dtype=torch.int32, device=self.device)
        self.prompt_source = torch.arange(rows, dtype=torch.int32, device=self.device)
        self.shared_prompt = torch.zeros(1, dtype=torch.int32, device=self.device)
        self.use_graphs = cuda_graph and _graphs_supported(self.device)
        self.fused = kernels_usable(self.device)  # the layers' norms, rotary and SiLU x up as Triton kernels
        # attention_kernel reads a step's filled slots by itself: one recorded step for every attention length
        self.one_length = self.fused and _kernel_attends(model.config, self.dtype)
        self.sampling_kernel = self.fused and rows >= SAMPLE_KERNEL_ROWS
        if self.sampling_kernel:
            from .sample_kernel import fits

            self.sampling_kernel = fits(rows, model.config.vocab_size)
        self.graphs, self.pool, self.graph_logits = {}, None, None  # attention length -> its replay; one memory pool

    def fits(self, rows: int, prompt_len: int, max_new_tokens: int) -> bool:
        return rows <= self.rows and max_new_tokens == self.max_new_tokens and prompt_len + max_new_tokens <= self.total

    def decode(self, input_ids, attention_mask, temperatures, top_ps, eos_ids, pad_id: int, streamer=None):
        """New token ids (B, max_new_tokens): the end-of-sequence token kept, padding after it.

        `streamer` (one row) gets what generate() gives its streamer: the prompt, each new token up to the
        end-of-sequence token, then end().
        """
        import torch

        batch_rows, prompt_len = input_ids.shape
        if not self.fits(batch_rows, prompt_len, self.max_new_tokens):
            raise ValueError(f"A batch of {batch_rows} rows x {prompt_len} prompt tokens does not fit this decoder "
                             f"({self.rows} rows, {self.total} slots for prompt and {self.max_new_tokens} new tokens).")
        filler = self.rows - batch_rows  # rows that fill the batch up to the recorded shape: pad tokens, never sampled
        input_ids = torch.nn.functional.pad(input_ids, (0, 0, 0, filler), value=pad_id)
        attention_mask = torch.nn.functional.pad(attention_mask, (0, 0, 0, filler), value=0)
        temperature = torch.tensor(temperatures, device=self.device, dtype=torch.float32)
        top_p = torch.tensor(top_ps, device=self.device, dtype=torch.float32)
        eos = torch.tensor(sorted(eos_ids), device=self.device)
        # The noise comes from a generator of its own, seeded from torch's CPU generator (what seed_everything seeds):
        # a failed recording leaves torch's CUDA generator unusable, not this one.
        base_seed = int(torch.randint(2**62, ()).item())
        generator = torch.Generator(device=self.device).manual_seed(base_seed)
        step_seeds = torch.Generator().manual_seed(base_seed)  # one per step for sample_kernel, drawn on the host

        self.load_prompts(attention_mask, pad_id)
        with decode_attention(self.model, self.fused, self.prompt_rows()) as keys_cut_to_mask, \
                fused_layers(self.model, self.fused):
            logits = self._prefill(input_ids, attention_mask, keys_cut_to_mask, min(temperatures) > 0)
            if self.graph_logits is None:  # every recording writes its logits here: one copy, not one per graph
                self.graph_logits = torch.empty_like(logits)
            if streamer is not None:
                streamer.put(input_ids[:batch_rows].cpu())
            new_ids = torch.full((batch_rows, self.max_new_tokens), pad_id, dtype=torch.long, device=self.device)
            finished = torch.zeros(batch_rows, dtype=torch.bool, device=self.device)
            for k in range(self.max_new_tokens):
                seed = int(torch.randint(2**31 - 1, (), generator=step_seeds)) if self.sampling_kernel else None
                chosen = sample_next(logits[:batch_rows], temperature, top_p, generator, seed).masked_fill(finished, pad_id)
                new_ids[:, k] = chosen
                finished |= torch.isin(chosen, eos)
                if streamer is not None:  # the host waits for each token anyway, so the loop may stop right at the end
                    streamer.put(chosen.cpu())
                    if bool(finished.all()):
                        break
                if k == self.max_new_tokens - 1 or (k % FINISHED_CHECK_EVERY == FINISHED_CHECK_EVERY - 1 and bool(finished.all())):
                    break
                self.token[:batch_rows].copy_(chosen.unsqueeze(1))
                self.cache_position.fill_(prompt_len + k)
                length = self.total
                if keys_cut_to_mask and not self.one_length:
                    length = min(self.total, (prompt_len + k) // KV_BUCKET * KV_BUCKET + KV_BUCKET)
                logits = self._next_logits(length)
        if streamer is not None:
            streamer.end()
        return new_ids

    def load_prompts(self, attention_mask, pad_id: int):
        """Writes what the recorded step reads of a batch: its prompt length, each row's prompt slots and token count.
        `attention_mask` has the decoder's rows (padding rows included)."""
        import torch

        prompt_len = attention_mask.shape[1]
        self.prompt_len.fill_(prompt_len)
        self.prompt_slots.zero_()
        self.prompt_slots[:, :prompt_len] = attention_mask.bool()
        self.real_tokens.copy_(attention_mask.long().sum(dim=1, keepdim=True))
        self.token.fill_(pad_id)
        self.first_slot.copy_(prompt_len - self.real_tokens[:, 0])  # a row of padding only: its first answer slot
        self.prompt_source.copy_(torch.arange(self.rows, device=self.device))
        self.shared_prompt.zero_()

    def prompt_rows(self):
        """(first slot, source row, shared slots) for attention_kernel; the last two set by _prefill where a batch's
        rows repeat prompts."""
        return self.first_slot, self.prompt_source, self.shared_prompt

    def _prefill(self, input_ids, attention_mask, keys_cut_to_mask: bool, share_prompts: bool):
        """Last-position logits of the prompts, their keys and values written from slot 0.

        A sweep samples each prompt in many rows (its settings x samples, 45 by default). With `share_prompts`,
        where a batch's distinct rows are DISTINCT_PROMPTS_SHARE of its rows or fewer, each distinct prompt is run
        once into a cache of its own and its keys, values and logits are copied to the rows that repeat it. A
        smaller batch may round differently (the GPU's matmuls pick their kernels by shape), which leaves a sampled
        row's distribution as it was but can turn a greedy row's near-tie: decode() shares only where every row
        samples."""
        import torch
        from transformers import StaticCache

        prompt_len = input_ids.shape[1]
        if share_prompts:
            distinct, repeats = torch.unique(torch.cat([input_ids, attention_mask], dim=1), dim=0, return_inverse=True)
            share_prompts = len(distinct) <= DISTINCT_PROMPTS_SHARE * len(input_ids)
        if not share_prompts:
            for layer in self.cache.layers:
                if layer.is_initialized:
                    layer.cumulative_length.zero_()  # the layers write where their counter points: slot 0
            return self._run_prompts(input_ids, attention_mask, self.cache, prompt_len if keys_cut_to_mask else self.total)
        own = StaticCache(config=self.model.config, max_cache_len=prompt_len)
        logits = self._run_prompts(distinct[:, :prompt_len], distinct[:, prompt_len:], own, prompt_len)
        rows = torch.arange(len(repeats), device=repeats.device)
        first = torch.full((len(distinct),), len(repeats), device=repeats.device)
        self.prompt_source.copy_(first.scatter_reduce_(0, repeats, rows, "amin")[repeats])  # each prompt's first row
        self.shared_prompt.fill_(prompt_len)
        for layer, distinct_layer in zip(self.cache.layers, own.layers):
            keys, values = distinct_layer.keys[repeats], distinct_layer.values[repeats]
            if not layer.is_initialized:
                layer.lazy_initialization(keys, values)  # reads only the shapes: (rows, heads, _, dim)
            layer.keys[:, :, :prompt_len] = keys
            layer.values[:, :, :prompt_len] = values
        return logits[repeats]

    def _run_prompts(self, input_ids, attention_mask, cache, width: int):
        """The prompts through the model into `cache` (its counters at slot 0), masks `width` slots wide: causal
        over the real prompt tokens; a padding query sees everything (its output is never used, and a row with
        nothing to attend to would give NaN)."""
        import torch

        prompt_len = input_ids.shape[1]
        positions = (attention_mask.long().cumsum(dim=-1) - 1).masked_fill(attention_mask == 0, 1)
        slots = self.slots
        real = torch.nn.functional.pad(attention_mask.bool(), (0, width - prompt_len))
        allowed = real.unsqueeze(1) & (slots[:width].view(1, 1, -1) <= slots[:prompt_len].view(1, -1, 1))
        allowed |= ~allowed.any(dim=-1, keepdim=True)
        return self.model(
            input_ids=input_ids,
            attention_mask=_additive(allowed.unsqueeze(1), self.dtype, self.min_value),
            position_ids=positions,
            cache_position=torch.arange(prompt_len, device=self.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]

    def _step(self, length: int, out=None):
        """One token per row at slot cache_position (below `length`): sees its real prompt tokens and every generated
        slot so far; attention reads the first `length` slots of the cache. Its logits, written into `out` where
        given: by the LM head's own matmul where the head is a plain linear layer (no copy of the logits after)."""
        import torch

        # the slot this step writes, however often it has run: every layer's counter in one launch
        counters = [layer.cumulative_length for layer in self.cache.layers]
        torch._foreach_copy_(counters, [self.cache_position[0]] * len(counters))
        slots = self.slots[:length]
        generated = (slots >= self.prompt_len) & (slots <= self.cache_position)
        seen = self.prompt_slots[:, :length] | generated.unsqueeze(0)
        inputs = dict(input_ids=self.token,
                      attention_mask=_additive(seen[:, None, None, :], self.dtype, self.min_value),
                      position_ids=self.real_tokens + (self.cache_position - self.prompt_len),
                      cache_position=self.cache_position, past_key_values=self.cache, use_cache=True)
        head = _plain_head(self.model)
        if out is not None and head is not None and head.weight.dtype == out.dtype:
            hidden = causal_lm(self.model).model(**inputs).last_hidden_state[:, -1]
            return torch.mm(hidden, head.weight.t(), out=out)  # the matmul nn.Linear runs, into the graph's logits
        logits = self.model(**inputs).logits[:, -1]
        return logits if out is None else out.copy_(logits)

    def _next_logits(self, length: int):
        """The step's logits: its graph for `length` replayed (recorded the first time), or the step run eagerly
        without graphs or after a recording failed."""
        import torch

        if self.use_graphs and length not in self.graphs:
            try:
                step = functools.partial(self._step, length, self.graph_logits)
                self.graphs[length], _, self.pool = _record(step, self.pool)
            except torch.OutOfMemoryError:
                raise  # generate() retries with a smaller batch
            except RuntimeError as error:
                self.use_graphs = False
                print(f"Recording the decoding step as a CUDA graph failed ({str(error).splitlines()[0]}); the rest of "
                      "this call decodes without graphs: the same tokens, more slowly.", flush=True)
        if self.use_graphs:
            self.graphs[length]()
            return self.graph_logits
        return self._step(length)


def kernels_usable(device) -> bool:
    """The Triton kernels (layer_kernels, sample_kernel) run on this device: CUDA, Ampere or later, Triton installed."""
    import torch

    return (device.type == "cuda" and torch.cuda.get_device_capability(device) >= KERNEL_CAPABILITY
            and importlib.util.find_spec("triton") is not None)


def _kernel_attends(config, dtype) -> bool:
    """attention_kernel handles this model's decoding steps (its heads, head size and dtype)."""
    from . import attention_kernel

    heads = config.num_attention_heads
    key_heads = getattr(config, "num_key_value_heads", None) or heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return attention_kernel.supports(heads, key_heads, dim, dtype)


def _plain_head(model):
    """The LM head where the model's logits are its output as it is (PLAIN_HEAD_MODELS) and it is a plain linear
    layer without bias; else None."""
    import torch

    head = model.get_output_embeddings()
    plain = type(causal_lm(model)).__name__ in PLAIN_HEAD_MODELS and type(head) is torch.nn.Linear
    return head if plain and head.bias is None else None


def _graphs_supported(device) -> bool:
    """CUDA graphs exist on CUDA devices only (a CPU test stands in for recording here)."""
    return device.type == "cuda"


def _additive(allowed, dtype, min_value):
    """A boolean attention mask as the additive one attention adds to its scores (0 where allowed)."""
    import torch

    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, min_value)


def _record(step, pool=None):
    """(replay, output, pool): `step` recorded as a CUDA graph after one warm-up run; replay() rewrites output in place.

    Graphs recorded into one `pool` (None: a new one, returned) may replay in any order: no recording leaves a
    tensor of its own alive there (the step's logits are copied out), so each replay only reuses its scratch memory.
    The recording is thread-local, as torch's compiled CUDA graphs record: a CUDA call from another thread of the
    process (a notebook kernel runs several) cannot invalidate it. A failed recording raises with the current stream
    restored."""
    import torch

    caller = torch.cuda.current_stream()
    stream = _recording_stream(torch.cuda.current_device())
    stream.wait_stream(caller)
    with torch.cuda.stream(stream):
        step()  # warm-up: same inputs as the first replay, which rewrites the same cache slot
    caller.wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
            output = step()
    except BaseException:
        torch.cuda.set_stream(caller)  # torch.cuda.graph leaves the recording stream current when its capture fails
        raise
    return graph.replay, output, pool if pool is not None else graph.pool()


@functools.cache
def _recording_stream(device: int):
    """The one stream every warm-up and recording runs on. cuBLAS keeps a workspace per stream, made by the first
    matmul there: made in a warm-up it lives in ordinary memory, where made during a recording it can live in that
    graph's pool, freed with the decoder's graphs. With a new warm-up stream per recording the sweep's second batch
    (821 rows, H200) failed inside cuBLASLt while recording; on one stream that batch recorded."""
    import torch

    return torch.cuda.Stream(device)
