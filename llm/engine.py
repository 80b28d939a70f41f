"""The decoder stack of a Llama-family backbone, run our way: per-stream KV caches, batches of streams,
and the latency levers (early exit, token-adaptive layer skipping, concurrent layers, richer heads).

Why not the library's forward: a decision appends a handful of tokens to a short context, and
the policy server batches streams whose contexts differ in length; the levers change which
blocks run for which token and what lands in the cache. All of that lives in the layer loop,
so the loop is ours (:class:`Decoder`), written once and run on two kinds of block:

* :class:`ModuleBlock` calls the model's own sub-modules (``q_proj``, ``mlp`` ...), so LoRA
  adapters and autograd work: training uses it;
* :class:`FusedBlock` holds the same weights fused (q/k/v in one matrix, gate/up in another,
  the norm scales folded in), with fewer and larger matrix products: inference uses it.

With no lever on, both compute exactly what the library's ``LlamaModel`` computes (tested).
Supported: ``llama``, ``qwen2`` and ``mistral`` (SmolLM2 is a Llama); other architectures
keep the library's forward and have no levers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

#: Architectures whose blocks this loop runs.
LLAMA_FAMILY = ("llama", "qwen2", "mistral")


def supports(model: nn.Module) -> bool:
    """True when ``model`` (a causal LM, possibly LoRA-wrapped) is a Llama-family decoder."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in LLAMA_FAMILY


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x), in float32 like the library's RMSNorm, returned in x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class Levers:
    """The latency levers of a decoder, saved in the checkpoint config (all off by default).

    * ``exit_layers``: action heads after these block counts (e.g. ``[2, 4]``: after the 2nd and
      4th block), trained jointly with the final head; at inference a step stops at the first
      exit whose confidence reaches ``exit_threshold`` (None: never exit early).
    * ``gates``: a small router before every block from ``gate_start`` on decides per token to
      run or skip it (D-LLM), trained toward an execution ratio ``gate_target`` with weight
      ``gate_weight``; a skipped token is invisible as a key in that block.
    * ``concurrent``: groups of consecutive blocks that read the same input and add their
      outputs (CQIL): ``h + sum(f_i(h) - h)``, so a group's members are independent of each
      other: on parallel hardware they could run at once. Here they run one after another (a
      GEMM-level measurement on CPU found no gain in widening them into one operation), so on
      CPU the lever saves nothing; ``benchmarks/bench_levers.py`` measures it.
    * ``head_mlp``: a per-head Linear + SiLU on each block's attention output, shared by the
      heads of a block (LLM_Compression's richer blocks), added as a residual that starts at 0.
    """

    exit_layers: list[int] = field(default_factory=list)
    exit_threshold: float | None = None
    #: how an exit head's confidence is read: 'softmax' (top probability, imitation heads) or
    #: 'margin' (best minus second-best output, action-value heads)
    exit_confidence: str = "softmax"
    gates: bool = False
    gate_start: int = 1
    gate_hidden: int = 32
    gate_target: float = 0.5
    gate_weight: float = 1.0
    concurrent: list[list[int]] = field(default_factory=list)
    head_mlp: bool = False

    def check(self, n_blocks: int) -> None:
        if self.exit_confidence not in ("softmax", "margin"):
            raise ValueError(f"exit_confidence must be 'softmax' or 'margin', got {self.exit_confidence!r}")
        if any(not 1 <= e < n_blocks for e in self.exit_layers) or sorted(set(self.exit_layers)) != self.exit_layers:
            raise ValueError(f"exit_layers must be increasing block counts in [1, {n_blocks - 1}], got {self.exit_layers}")
        if self.gates and not 0 <= self.gate_start < n_blocks:
            raise ValueError(f"gate_start must be in [0, {n_blocks - 1}], got {self.gate_start}")
        if not 0.0 < self.gate_target <= 1.0:
            raise ValueError(f"gate_target must be in (0, 1], got {self.gate_target}")
        seen: set[int] = set()
        for group in self.concurrent:
            if len(group) < 2 or group != list(range(group[0], group[0] + len(group))):
                raise ValueError(f"a concurrent group is 2+ consecutive block indices, got {group}")
            if seen & set(group) or group[0] < 0 or group[-1] >= n_blocks:
                raise ValueError(f"concurrent groups must not overlap and must lie in [0, {n_blocks - 1}]: {group}")
            seen |= set(group)
        if self.gates and seen:
            raise ValueError("gates and concurrent groups cannot be combined")

    @property
    def active(self) -> bool:
        return bool(self.exit_layers or self.gates or self.concurrent or self.head_mlp)


class _Router(nn.Module):
    """D-LLM's gate, narrowed: Linear(d -> r), RMSNorm, SiLU, Linear(r -> 2); starts at 'execute'."""

    def __init__(self, hidden: int, width: int) -> None:
        super().__init__()
        self.inp = nn.Linear(hidden, width)
        self.norm = nn.RMSNorm(width, eps=1e-6)
        self.out = nn.Linear(width, 2)
        with torch.no_grad():
            self.out.bias.copy_(torch.tensor([0.1, 2.0]))  # D-LLM's start: execute

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.norm(self.inp(h))))


class LeverModules(nn.Module):
    """The trainable modules the levers add (routers, exit heads, per-head MLPs); part of the policy's weights."""

    def __init__(self, levers: Levers, n_blocks: int, hidden: int, head_dim: int, n_actions: int) -> None:
        super().__init__()
        levers.check(n_blocks)
        self.levers = levers
        self.routers = nn.ModuleDict(
            {str(i): _Router(hidden, levers.gate_hidden) for i in range(levers.gate_start, n_blocks)}
            if levers.gates else {}
        )
        self.exit_heads = nn.ModuleDict({str(e): nn.Linear(hidden, n_actions) for e in levers.exit_layers})
        self.head_mlps = nn.ModuleDict(
            {str(i): nn.Linear(head_dim, head_dim) for i in range(n_blocks)} if levers.head_mlp else {}
        )
        for lin in self.head_mlps.values():  # residual branch starts at 0: the pretrained function is unchanged
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)


class _BlockBase:
    """What the layer loop needs of one block."""

    n_heads: int
    n_kv: int
    head_dim: int

    def qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def attn_out(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ModuleBlock(_BlockBase):
    """A block computed through the model's own modules (LoRA and autograd work): for training."""

    def __init__(self, layer: nn.Module, config) -> None:
        self.layer = layer
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def qkv(self, h):
        x = self.layer.input_layernorm(h)
        attn = self.layer.self_attn
        return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)

    def attn_out(self, a):
        return self.layer.self_attn.o_proj(a)

    def mlp(self, h):
        return self.layer.mlp(self.layer.post_attention_layernorm(h))


class FusedBlock(_BlockBase):
    """The same block with fused weights (norm scales folded into the projections that follow): for inference."""

    def __init__(self, layer: nn.Module, config) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.eps1 = layer.input_layernorm.variance_epsilon
        self.eps2 = layer.post_attention_layernorm.variance_epsilon
        with torch.no_grad():
            g1 = layer.input_layernorm.weight
            g2 = layer.post_attention_layernorm.weight
            self.w_qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]) * g1
            biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
            self.b_qkv = torch.cat(biases) if biases[0] is not None else None
            self.w_o = attn.o_proj.weight.detach()  # shared with the block: no copy
            self.b_o = None if attn.o_proj.bias is None else attn.o_proj.bias.detach().clone()
            self.w_gu = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]) * g2
            self.w_down = mlp.down_proj.weight.detach()
        self.act = mlp.act_fn
        self.split = (self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim)
        self.inter = mlp.gate_proj.weight.shape[0]

    def qkv(self, h):
        out = F.linear(_rms(h, self.eps1), self.w_qkv, self.b_qkv)
        return out.split(self.split, dim=-1)

    def attn_out(self, a):
        return F.linear(a, self.w_o, self.b_o)

    def mlp(self, h):
        gate, up = F.linear(_rms(h, self.eps2), self.w_gu).split(self.inter, dim=-1)
        return F.linear(self.act(gate) * up, self.w_down)


class StreamKv:
    """One stream's keys and values for every block, with a flag per slot (False: not a key, e.g. a skipped token)."""

    def __init__(self, n_blocks: int, n_kv: int, head_dim: int, capacity: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.k = torch.zeros(n_blocks, n_kv, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.valid = torch.zeros(n_blocks, capacity, dtype=torch.bool, device=device)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def reset(self) -> None:
        self.length = 0


@dataclass
class StepOutput:
    """Hidden states of the new tokens (after the final norm) and what the levers did."""

    hidden: torch.Tensor
    #: exit depth (blocks run) -> hidden after the final norm there (training, ``collect_exits``)
    exit_hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    #: mean execution ratio of the gated blocks, per row (differentiable in training)
    exec_ratio: torch.Tensor | None = None
    #: blocks run before the step stopped (early exit at inference), else all
    blocks_run: int = 0


#: Asked at each exit depth during inference: exit now, given the normed hidden state there?
ExitCheck = Callable[[int, torch.Tensor], bool]


class Decoder:
    """The layer loop over a Llama-family model's blocks (see the module docstring).

    ``lever_modules`` are owned (and trained, and saved) by the policy; the decoder only runs them.
    """

    def __init__(self, lm: nn.Module, levers: Levers | None = None, lever_modules: LeverModules | None = None):
        from llm.backbone import decoder_layers

        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        if not supports(base):
            raise ValueError(f"the layer loop runs {LLAMA_FAMILY} models, not {base.config.model_type!r}")
        self.config = base.config
        self.layers = decoder_layers(base)
        body = base.model
        self.norm = body.norm
        self.rotary = body.rotary_emb
        self.levers = levers or Levers()
        self.levers.check(len(self.layers))
        if self.levers.active and lever_modules is None:
            raise ValueError("levers are on but no lever modules were given")
        self.mods = lever_modules
        self._fused: list[FusedBlock] | None = None
        first = ModuleBlock(self.layers[0], self.config)
        self.n_kv, self.head_dim = first.n_kv, first.head_dim
        weight = self.layers[0].self_attn.q_proj.weight
        self._dtype, self._device = weight.dtype, weight.device
        self._released = False

    @property
    def n_blocks(self) -> int:
        return len(self.layers)

    def fuse(self) -> None:
        """Build the fused inference blocks (after LoRA is merged); call again whenever the weights change."""
        self._fused = [FusedBlock(layer, self.config) for layer in self.layers]

    def release_unfused(self) -> None:
        """Drop the blocks' own weights where the fused blocks hold copies (inference only from now on).

        The fused blocks keep what they need: their fused matrices and the norms folded into them.
        """
        if self._fused is None:
            raise RuntimeError("fuse() first")
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for module in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                module.to("meta")
        self._released = True

    def _blocks(self, training: bool) -> list[_BlockBase]:
        if self._fused is not None and not training:
            return self._fused
        if self._released:
            raise RuntimeError("this decoder kept only its fused inference blocks: it cannot train")
        return [ModuleBlock(layer, self.config) for layer in self.layers]

    def new_kv(self, capacity: int) -> StreamKv:
        return StreamKv(self.n_blocks, self.n_kv, self.head_dim, capacity, self._dtype, self._device)

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.rotary.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        scale = float(getattr(self.rotary, "attention_scaling", 1.0))
        return (emb.cos() * scale).to(dtype)[:, None], (emb.sin() * scale).to(dtype)[:, None]

    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        kvs: list[StreamKv] | None = None,
        *,
        training: bool = False,
        collect_exits: bool = False,
        exit_check: ExitCheck | None = None,
    ) -> StepOutput:
        """Run the blocks on ``embeds`` (B, n, H) at ``positions`` (B, n).

        Without ``kvs`` the n tokens attend causally among themselves (training: whole windows).
        With one :class:`StreamKv` per row they also attend to each stream's cached keys, whatever
        its length, and their own keys and values are appended (inference). ``training`` samples
        the gates (hard Gumbel-softmax) instead of thresholding them; ``collect_exits`` returns the
        normed hidden state at every exit depth; ``exit_check`` (inference) may stop the step at an
        exit depth, the skipped blocks then caching keys and values of the exit's hidden state
        (CALM's propagation), so later steps attend to a complete cache.
        """
        levers = self.levers
        b, n, _ = embeds.shape
        blocks = self._blocks(training)
        cos, sin = self._rope(positions, embeds.dtype)
        if kvs is not None:
            if len(kvs) != b:
                raise ValueError(f"{b} rows need {b} KV caches, got {len(kvs)}")
            if any(kv.length + n > kv.capacity for kv in kvs):
                raise ValueError("a stream's KV cache is full: rebuild its context (the session slides its window)")
        past = max((kv.length for kv in kvs), default=0) if kvs is not None else 0
        own = torch.ones(n, n, dtype=torch.bool, device=embeds.device).tril()
        out = StepOutput(hidden=embeds)
        exec_sum, exec_count = torch.zeros(b, device=embeds.device), 0
        starts = {g[0]: g for g in levers.concurrent}
        h = embeds
        i = 0
        while i < self.n_blocks:
            group = starts.get(i, [i])
            gate = None
            if levers.gates and i >= levers.gate_start:
                logits = self.mods.routers[str(i)](h)
                if training:
                    gate = F.gumbel_softmax(logits.float(), tau=1.0, hard=True)[..., 1].to(h.dtype)
                else:
                    gate = (logits.softmax(-1)[..., 1] >= 0.5).to(h.dtype)
                exec_sum = exec_sum + gate.float().mean(-1)
                exec_count += 1
            h = h + sum(self._delta(blocks[j], j, h, cos, sin, own, kvs, past, gate) for j in group)
            i = group[-1] + 1
            if i in levers.exit_layers:
                if collect_exits:
                    out.exit_hidden[i] = self.norm(h)
                if exit_check is not None and exit_check(i, self.norm(h)):
                    self._propagate(blocks, i, h, cos, sin, kvs)
                    out.blocks_run = i
                    break
        else:
            out.blocks_run = self.n_blocks
        if kvs is not None:
            for kv in kvs:
                kv.length += n
        out.hidden = self.norm(h)
        if exec_count:
            out.exec_ratio = exec_sum / exec_count
        return out

    def _propagate(self, blocks, start: int, h, cos, sin, kvs) -> None:
        """Cache keys/values of ``h`` in blocks ``start..``: an early-exited step stays visible to later ones."""
        if kvs is None:
            return
        b, n, _ = h.shape
        for j in range(start, self.n_blocks):
            _, k, v = blocks[j].qkv(h)
            k = k.view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
            v = v.view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
            k = k * cos + _rotate_half(k) * sin
            for row, kv in enumerate(kvs):
                kv.k[j, :, kv.length:kv.length + n] = k[row]
                kv.v[j, :, kv.length:kv.length + n] = v[row]
                kv.valid[j, kv.length:kv.length + n] = True

    def _delta(self, block: _BlockBase, index: int, h, cos, sin, own, kvs, past: int, gate) -> torch.Tensor:
        """f(h) - h of block ``index`` (attention and MLP with their residuals); gated per token when ``gate``.

        At inference (hard gates, one stream) the tokens that skip the block are not computed at all:
        that is where D-LLM's saving comes from. Their cache slots are marked as not keys.
        """
        if gate is not None and not gate.requires_grad and h.shape[0] == 1 and not bool(gate.all()):
            run = torch.nonzero(gate[0] > 0.5).squeeze(1)
            delta = torch.zeros_like(h)
            if kvs is not None:
                kvs[0].valid[index, kvs[0].length:kvs[0].length + h.shape[1]] = False
            if len(run):
                delta[:, run] = self._block_delta(block, index, h[:, run], cos[:, :, run], sin[:, :, run],
                                                  own[run][:, run], kvs, past, None, slots=run)
            return delta
        return self._block_delta(block, index, h, cos, sin, own, kvs, past, gate)

    def _block_delta(self, block: _BlockBase, index: int, h, cos, sin, own, kvs, past: int, gate,
                     slots: torch.Tensor | None = None) -> torch.Tensor:
        """The block on the tokens of ``h``; ``slots``: their offsets in the step when only some run."""
        b, n, _ = h.shape
        q, k, v = block.qkv(h)
        q = q.view(b, n, block.n_heads, block.head_dim).transpose(1, 2)
        k = k.view(b, n, block.n_kv, block.head_dim).transpose(1, 2)
        v = v.view(b, n, block.n_kv, block.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        is_key = torch.ones(b, n, dtype=torch.bool, device=h.device) if gate is None else gate > 0.5
        # new tokens: causal, skipped tokens are not keys (D-LLM), every token sees itself
        mask = (own[None] & is_key[:, None, :]) | torch.eye(n, dtype=torch.bool, device=h.device)[None]
        keys, values = k, v
        if kvs is not None:
            if past:
                positions = torch.arange(past, device=h.device)
                seen = torch.stack([kv.valid[index, :past] & (positions < kv.length) for kv in kvs])
                keys = torch.cat([torch.stack([kv.k[index, :, :past] for kv in kvs]), k], dim=2)
                values = torch.cat([torch.stack([kv.v[index, :, :past] for kv in kvs]), v], dim=2)
                mask = torch.cat([seen[:, None, :].expand(b, n, past), mask], dim=2)
            for row, kv in enumerate(kvs):  # a shorter stream writes where its own history ends
                where = slice(kv.length, kv.length + n) if slots is None else kv.length + slots
                kv.k[index, :, where] = k[row]
                kv.v[index, :, where] = v[row]
                kv.valid[index, where] = is_key[row]
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None], enable_gqa=True)
        if self.levers.head_mlp:
            a = a + F.silu(self.mods.head_mlps[str(index)](a))
        a = a.transpose(1, 2).reshape(b, n, block.n_heads * block.head_dim)
        h_mid = h + block.attn_out(a)
        delta = (h_mid - h) + block.mlp(h_mid)
        return delta if gate is None else delta * gate[..., None]
