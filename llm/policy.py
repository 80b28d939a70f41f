"""The decision-transformer policy: learned token embeddings fed to a frozen (LoRA-adapted) causal LM.

Each step becomes ``[return-to-go, state_1 .. state_S, action]`` tokens (``tokens_per_step``
= S + 2), a window holds up to ``window`` steps, and a timestep embedding is added to every
token of its step. The action logits of step t are read from its last state token, so the
action token of step t only influences later steps (causal attention): training feeds whole
windows, inference can append one step at a time.

Inference keeps the LM's KV cache across steps (:class:`DecisionSession`). A decision appends
only ``[action_{t-1}, return_t, state_t]`` (``tokens_per_step`` tokens) instead of
re-encoding the window. Positions restart at 0 at the start of each window, as in training,
and attention cannot drop a step from the cache exactly (every later key depends on it), so
when the window is full the session rebuilds the cache from the last ``keep_steps`` steps:

* ``keep_steps = window - 1`` reproduces "the last ``window`` steps" exactly, but then every
  decision after the window fills re-encodes ``window`` steps: the same cost as no cache.
* ``keep_steps = k < window - 1`` rebuilds once every ``window - k`` decisions, so a decision
  costs ``tokens_per_step * (1 + k / (window - k))`` tokens amortised (k = w/2: 2 steps'
  worth instead of w). The context then varies between k + 1 and ``window`` steps, which
  training covers: the prediction at position j of a training window sees j earlier steps.

The default is ``keep_steps = window // 2``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from llm.backbone import decoder_layers, hidden_size_of
from llm.engine import Decoder, LeverModules, Levers, StepOutput, StreamKv, supports
from llm.features import FeatureSpec, RewardScale, TokenSpec

#: Window length in steps (NetLLM's w).
DEFAULT_WINDOW = 20
#: Channels of each state encoder before the projection to the LM width (NetLLM: 256).
DEFAULT_CHANNELS = 256
#: Kernel of the 1-D convolution over a series feature.
SERIES_KERNEL = 4


#: How an agent turns the policy's action distribution into an action (``PolicyConfig.decode``).
DECODES = ("argmax", "sample", "expected")


@dataclass
class PolicyConfig:
    """Everything besides weights needed to rebuild a policy and feed it: stored as policy_config.json."""

    task: str
    backbone: str  # 'default', or a model directory (relative paths are relative to the checkpoint)
    n_actions: int
    features: FeatureSpec
    rewards: RewardScale
    max_timestep: int
    window: int = DEFAULT_WINDOW
    channels: int = DEFAULT_CHANNELS
    action_values: list[float] | None = None  # AQM: the p' of each action index; ABR: None
    #: keep only the backbone's first k blocks (None: all)
    backbone_layers: int | None = None
    #: False: the return token always carries 0 (plain imitation in the same architecture)
    return_conditioning: bool = True
    #: latency levers of the decoder (llm.engine.Levers fields); empty: none
    levers: dict = field(default_factory=dict)
    #: a LoRA adapter folded into the backbone before this checkpoint's own (relative to the checkpoint)
    base_adapter: str | None = None
    lora: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    #: ABR: how the agent acts with it, the margin (s) of agents.abr.guard.StallGuard; None: unguarded
    stall_guard_s: float | None = None
    #: AQM: how the agent acts with it, the utilisation below which agents.aqm.guard.IdleGuard lowers p' on an
    #: empty queue; None: unguarded
    idle_guard_utilisation: float | None = None
    #: how the agent decodes actions: 'argmax'; 'sample' (from the policy's distribution, seeded); AQM also
    #: 'expected' (the p' at the expected log p' of the distribution: a continuous answer between grid values)
    decode: str = "argmax"

    def __post_init__(self) -> None:
        if self.decode not in DECODES:
            raise ValueError(f"decode must be one of {DECODES}, got {self.decode!r}")
        if self.decode == "expected" and self.task != "aqm":
            raise ValueError("decode 'expected' averages p' values: it is for AQM policies")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["features"] = self.features.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PolicyConfig:
        data = dict(data)
        data["features"] = FeatureSpec.from_dict(data["features"])
        data["rewards"] = RewardScale(**data["rewards"])
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> PolicyConfig:
        return cls.from_dict(json.loads(path.read_text()))


class _ScalarEncoder(nn.Module):
    """A group of scalars -> one token (NetLLM: linear + LeakyReLU, then a projection)."""

    def __init__(self, width: int, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, channels), nn.LeakyReLU(), nn.Linear(channels, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _SeriesEncoder(nn.Module):
    """A history (or per-level vector) -> one token: 1-D conv, LeakyReLU, flatten, projection."""

    def __init__(self, width: int, channels: int, hidden: int) -> None:
        super().__init__()
        kernel = min(SERIES_KERNEL, width)
        self.conv = nn.Conv1d(1, channels, kernel)
        self.proj = nn.Linear(channels * (width - kernel + 1), hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = F.leaky_relu(self.conv(x.reshape(-1, 1, x.shape[-1])))
        return self.proj(y.flatten(1)).reshape(*lead, -1)


def _decoder(backbone: nn.Module) -> nn.Module:
    """The LM's transformer body (no vocabulary head), with any LoRA layers already injected in place."""
    model = backbone.get_base_model() if isinstance(backbone, PeftModel) else backbone
    return model.base_model


class DecisionTransformerPolicy(nn.Module):
    """State/return/action tokens through a frozen causal LM to action logits.

    Inputs are already scaled: ``states`` normalised by the FeatureSpec, ``returns``
    returns-to-go divided by the pool's maximum return, ``timesteps`` clipped to
    ``max_timestep``.
    """

    def __init__(
        self,
        backbone: PreTrainedModel | PeftModel,
        tokens: list[TokenSpec],
        n_actions: int,
        max_timestep: int,
        window: int = DEFAULT_WINDOW,
        channels: int = DEFAULT_CHANNELS,
        levers: Levers | None = None,
    ) -> None:
        super().__init__()
        if n_actions < 2:
            raise ValueError(f"n_actions must be >= 2, got {n_actions}")
        self.backbone = backbone
        self.tokens = list(tokens)
        self.n_actions = n_actions
        self.max_timestep = max_timestep
        self.window = window
        hidden = hidden_size_of(backbone)
        self.encoders = nn.ModuleList(
            (_SeriesEncoder if t.kind == "series" else _ScalarEncoder)(t.width, channels, hidden) for t in self.tokens
        )
        self._slices = []
        start = 0
        for t in self.tokens:
            self._slices.append(slice(start, start + t.width))
            start += t.width
        self.n_values = start
        self.return_embed = nn.Linear(1, hidden)
        self.action_embed = nn.Embedding(n_actions, hidden)
        self.timestep_embed = nn.Embedding(max_timestep + 1, hidden)
        nn.init.normal_(self.action_embed.weight, std=0.02)
        nn.init.normal_(self.timestep_embed.weight, std=0.02)
        # Start our tokens at the RMS of the LM's own token embeddings, the scale its layers were trained on.
        self.embed_ln = nn.LayerNorm(hidden)
        embeddings = backbone.get_input_embeddings().weight
        self.lm_dtype = embeddings.dtype  # the LM's own dtype (ours may differ)
        lm_rms = embeddings.detach().float().pow(2).mean().sqrt().item()
        nn.init.constant_(self.embed_ln.weight, lm_rms)
        self.head = nn.Linear(hidden, n_actions)
        self.levers = levers or Levers()
        base = backbone.get_base_model() if isinstance(backbone, PeftModel) else backbone
        self.lever_modules: LeverModules | None = None
        if self.levers.active:
            if not supports(base):
                raise ValueError(f"latency levers need a Llama-family backbone, not {base.config.model_type!r}")
            first = decoder_layers(base)[0].self_attn
            self.lever_modules = LeverModules(
                self.levers, len(decoder_layers(base)), hidden, first.head_dim, n_actions
            )
        # Llama-family backbones run through our layer loop (KV caches per stream, levers); others through theirs.
        self.decoder = Decoder(backbone, self.levers, self.lever_modules) if supports(base) else None

    @property
    def tokens_per_step(self) -> int:
        return len(self.tokens) + 2

    @property
    def n_state_tokens(self) -> int:
        return len(self.tokens)

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights that are ours (encoders, embeddings, head), without the LM or its adapter."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    @property
    def param_dtype(self) -> torch.dtype:
        """dtype of our own modules (the LM may differ)."""
        return self.head.weight.dtype

    def step_tokens(self, returns: torch.Tensor, states: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """[return, state_1..state_S] embeddings of steps: (B, K), (B, K, D), (B, K) -> (B, K, S + 1, H)."""
        dtype = self.param_dtype
        states = states.to(dtype)
        parts = [self.return_embed(returns.to(dtype).unsqueeze(-1))]
        parts += [enc(states[..., sl]) for enc, sl in zip(self.encoders, self._slices, strict=True)]
        tokens = torch.stack(parts, dim=-2) + self.timestep_embed(timesteps).unsqueeze(-2)
        return self.embed_ln(tokens)

    def action_tokens(self, actions: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Action embeddings: (B, K), (B, K) -> (B, K, 1, H)."""
        return self.embed_ln(self.action_embed(actions) + self.timestep_embed(timesteps)).unsqueeze(-2)

    def sequence(
        self, returns: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Token sequence of K steps, (B, K * tokens_per_step - missing, H).

        ``actions`` has K entries, or K - 1 when the last step's action is still to be chosen.
        """
        k = returns.shape[1]
        steps = self.step_tokens(returns, states, timesteps)
        acts = self.action_tokens(actions, timesteps[:, : actions.shape[1]])
        if actions.shape[1] == k:
            return torch.cat([steps, acts], dim=2).flatten(1, 2)
        if actions.shape[1] != k - 1:
            raise ValueError(f"need {k} or {k - 1} actions for {k} steps, got {actions.shape[1]}")
        head = torch.cat([steps[:, :-1], acts], dim=2).flatten(1, 2)
        return torch.cat([head, steps[:, -1]], dim=1)

    def release_for_inference(self) -> None:
        """Keep only what decisions use: the fused blocks (after :meth:`Decoder.fuse`), the final norm and ours.

        The token embedding table and LM head (a third of SmolLM2's weights, never used: our tokens are
        embeddings) and the unfused block weights are dropped. The policy can no longer train.
        """
        if self.decoder is None or self.decoder._fused is None:
            raise RuntimeError("release_for_inference needs the fused layer loop (llama-family, fuse() first)")
        base = self.backbone.get_base_model() if isinstance(self.backbone, PeftModel) else self.backbone
        base.get_input_embeddings().to("meta")
        if base.get_output_embeddings() is not None:
            base.get_output_embeddings().to("meta")
        self.decoder.release_unfused()

    @contextlib.contextmanager
    def plain(self):
        """Run without the latency levers for the block (the reference a lever is distilled toward)."""
        if self.decoder is None:
            yield
            return
        levers = self.decoder.levers
        self.decoder.levers = Levers()
        try:
            yield
        finally:
            self.decoder.levers = levers

    def run_lm(
        self,
        embeds: torch.Tensor,
        cache: StreamKv | DynamicCache | None = None,
        start_position: int = 0,
        *,
        collect_exits: bool = False,
        exit_check=None,
    ) -> StepOutput:
        """Run the LM body on embeddings at positions ``start_position..``; the cache (if any) grows in place."""
        b, n, _ = embeds.shape
        positions = torch.arange(start_position, start_position + n, device=embeds.device).expand(b, n)
        lm_dtype = self.lm_dtype
        if self.decoder is not None:
            return self.decoder.forward(
                embeds.to(lm_dtype), positions, None if cache is None else [cache],
                training=self.training and torch.is_grad_enabled(), collect_exits=collect_exits,
                exit_check=exit_check,
            )
        out = _decoder(self.backbone)(
            inputs_embeds=embeds.to(lm_dtype), position_ids=positions, cache=cache, use_cache=cache is not None
        )
        return StepOutput(hidden=out.last_hidden_state)

    def _last_states(self, hidden: torch.Tensor, k: int) -> torch.Tensor:
        last_state = torch.arange(k, device=hidden.device) * self.tokens_per_step + self.n_state_tokens
        return hidden[:, last_state].to(self.param_dtype)

    def outputs(
        self, returns: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor], torch.Tensor | None]:
        """(final head outputs (B, K, n_actions), exit heads' outputs by depth, gate execution ratio per row)."""
        k = returns.shape[1]
        if k > self.window:
            raise ValueError(f"windows hold at most {self.window} steps, got {k}")
        out = self.run_lm(self.sequence(returns, states, actions, timesteps), collect_exits=bool(self.levers.exit_layers))
        final = self.head(self._last_states(out.hidden, k))
        exits = {e: self.lever_modules.exit_heads[str(e)](self._last_states(h, k)) for e, h in out.exit_hidden.items()}
        return final, exits, out.exec_ratio

    def forward(
        self, returns: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Action outputs of every step of full windows: (B, K) ... -> (B, K, n_actions).

        Windows are right-padded (causal attention keeps padding from touching real steps);
        mask padded steps in the loss.
        """
        return self.outputs(returns, states, actions, timesteps)[0]

    def loss(
        self,
        returns: torch.Tensor,
        states: torch.Tensor,
        actions: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor,
        advantages: torch.Tensor | None = None,
        history_actions: torch.Tensor | None = None,
        soft: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss over unpadded steps and the greedy action accuracy (see :func:`action_loss`).

        With exit heads, each exit's action loss joins the final one, weighted by its depth (CALM);
        with gates, ``gate_weight * |execution ratio - gate_target|`` (D-LLM's compute budget).
        """
        context = actions if history_actions is None else history_actions  # what was really done before t
        final, exits, exec_ratio = self.outputs(returns, states, context, timesteps)
        valid = mask.bool()
        loss, accuracy = action_loss(final.float(), actions, valid, advantages, soft)
        if exits:
            n_blocks = self.decoder.n_blocks
            weights = {e: e / n_blocks for e in exits} | {n_blocks: 1.0}
            total = weights[n_blocks] * loss
            for e, out in exits.items():
                total = total + weights[e] * action_loss(out.float(), actions, valid, advantages, soft)[0]
            loss = total / sum(weights.values())
        if exec_ratio is not None:
            loss = loss + self.levers.gate_weight * (exec_ratio - self.levers.gate_target).abs().mean()
        return loss, accuracy


def action_loss(
    outputs: torch.Tensor, actions: torch.Tensor, valid: torch.Tensor, advantages: torch.Tensor | None = None,
    soft: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Imitation (cross-entropy to the logged action, or to its ``soft`` label weights) or, with
    ``advantages``, action-value regression.

    Action-value regression fits each output to the teacher's advantage of that action (its value
    minus the best action's, with the future known) by mean squared error, on the steps that carry
    values. The greedy action then maximises the *expected* advantage given what the policy sees,
    which prices the risk the teacher never ran; imitating a clairvoyant teacher's choice instead
    copies its boldness without its foresight. Accuracy is agreement with the logged action.
    """
    if advantages is None:
        loss = F.cross_entropy(outputs[valid], actions[valid] if soft is None else soft[valid].float())
    else:
        rows = valid & ~torch.isnan(advantages).any(-1)
        if not rows.any():  # a batch of steps without teacher values (the pool is checked to have some)
            zero = outputs.sum() * 0.0
            return zero, zero.detach()
        loss = F.mse_loss(outputs[rows], advantages[rows].float())
    accuracy = (outputs[valid].argmax(-1) == actions[valid]).float().mean()
    return loss, accuracy


@dataclass
class PendingStep:
    """The tokens one session must run for its current step, from cache position ``start``."""

    session: DecisionSession
    embeds: torch.Tensor
    start: int


@torch.no_grad()
def step_sessions(pendings: list[PendingStep]) -> list[torch.Tensor]:
    """Run the pending steps of many sessions of one policy, batching those that can share a forward pass.

    Sessions that append the same number of tokens to their caches (the usual case: one step each)
    run as one ragged batch through the layer loop, each at its own cache position; a session
    rebuilding its context runs alone. With exit heads, a batch exits only when every row is
    confident (CALM). Returns each session's logits, in order.
    """
    if not pendings:
        return []
    policy = pendings[0].session.policy
    if any(p.session.policy is not policy for p in pendings):
        raise ValueError("step_sessions batches sessions of one policy")
    results: list[torch.Tensor | None] = [None] * len(pendings)
    if policy.decoder is None:  # the library's forward: one session at a time
        for i, p in enumerate(pendings):
            results[i] = p.session.finish(p.session._run(p, None))
        return results
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(pendings):
        if p.start == 0 or p.session.batch_size != 1:
            results[i] = p.session.finish(p.session._run(p, p.session._exit_check()))
        else:
            groups.setdefault(tuple(p.embeds.shape[1:]), []).append(i)
    lm_dtype = policy.lm_dtype
    for members in groups.values():
        batch = [pendings[i] for i in members]
        n = batch[0].embeds.shape[1]
        embeds = torch.cat([p.embeds for p in batch]).to(lm_dtype)
        positions = torch.stack([torch.arange(p.start, p.start + n, device=embeds.device) for p in batch])
        kvs = [p.session._cache[0] for p in batch]
        out = policy.decoder.forward(embeds, positions, kvs, exit_check=batch[0].session._exit_check())
        for row, (i, p) in enumerate(zip(members, batch, strict=True)):
            p.session._cached_tokens = p.start + n
            single = StepOutput(hidden=out.hidden[row:row + 1], blocks_run=out.blocks_run)
            results[i] = p.session.finish(single)
    return results


class DecisionSession:
    """Step-by-step inference for ``batch_size`` environments acting in lockstep, reusing the KV cache.

    Call :meth:`step` once per decision with the new return-to-go, state and timestep of
    every environment and the action each applied after the previous decision (None on
    the first). Environments share the step count, so no padding is needed; run one
    session per group of environments that decide together.
    """

    def __init__(
        self,
        policy: DecisionTransformerPolicy,
        batch_size: int = 1,
        keep_steps: int | None = None,
        use_cache: bool = True,
    ) -> None:
        window = policy.window
        keep = window // 2 if keep_steps is None else keep_steps
        if not 1 <= keep <= window - 1:
            raise ValueError(f"keep_steps must be in [1, {window - 1}], got {keep}")
        self.policy = policy
        self.batch_size = batch_size
        self.keep_steps = keep if use_cache else window - 1
        self.use_cache = use_cache
        self.reset()

    def reset(self) -> None:
        """Forget the episode: the next step starts a new context."""
        self._returns: list[torch.Tensor] = []
        self._states: list[torch.Tensor] = []
        self._timesteps: list[torch.Tensor] = []
        self._actions: list[torch.Tensor] = []
        self._cache: list[StreamKv] | DynamicCache | None = None
        self._cached_tokens = 0
        self.rebuilds = 0
        #: the rebuilds :meth:`prepare` did between decisions (the rest happened inside a decision)
        self.slides_prepared = 0
        #: blocks run for the last step (fewer than all after an early exit)
        self.blocks_run = 0

    @property
    def context_steps(self) -> int:
        """Steps in the current context, the one being decided included."""
        return len(self._returns)

    def context(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(returns, states, actions, timesteps) of the current context, for checks against a full forward.

        After a step, ``actions`` holds one entry fewer than the others: the last is still to be chosen.
        """
        return (
            torch.stack(self._returns, 1),
            torch.stack(self._states, 1),
            torch.stack(self._actions, 1) if self._actions else self._empty_actions(),
            torch.stack(self._timesteps, 1),
        )

    def _empty_actions(self) -> torch.Tensor:
        return torch.zeros(self.batch_size, 0, dtype=torch.long, device=self.policy.head.weight.device)

    @torch.no_grad()
    def step(
        self,
        returns: torch.Tensor,
        states: torch.Tensor,
        timesteps: torch.Tensor,
        prev_actions: torch.Tensor | None,
    ) -> torch.Tensor:
        """Logits (B, n_actions) for this step; inputs (B,), (B, D), (B,) and the previous actions (B,)."""
        pending = self.begin(returns, states, timesteps, prev_actions)
        return self.finish(self._run(pending, self._exit_check()))

    def begin(
        self,
        returns: torch.Tensor,
        states: torch.Tensor,
        timesteps: torch.Tensor,
        prev_actions: torch.Tensor | None,
    ) -> PendingStep:
        """Add a step to the context and say what the LM must run for it (see :func:`step_sessions`)."""
        device = self.policy.head.weight.device
        if self._returns:
            if prev_actions is None:
                raise ValueError("prev_actions is required after the first step of an episode")
            self._actions.append(prev_actions.to(device=device, dtype=torch.long).reshape(self.batch_size))
        elif prev_actions is not None:
            raise ValueError("the first step of an episode has no previous action")
        slide = len(self._returns) == self.policy.window
        if slide:
            keep = self.keep_steps
            for history in (self._returns, self._states, self._timesteps, self._actions):
                del history[:-keep]
        self._returns.append(returns.to(device).reshape(self.batch_size))
        self._states.append(states.to(device).reshape(self.batch_size, -1))
        self._timesteps.append(timesteps.to(device=device, dtype=torch.long).reshape(self.batch_size))

        policy = self.policy
        if not self.use_cache or slide or self._cache is None:
            self.rebuilds += int(slide and self.use_cache)
            self._cache = self._new_cache() if self.use_cache else None
            return PendingStep(self, policy.sequence(*self.context()), 0)
        action = policy.action_tokens(self._actions[-1][:, None], self._timesteps[-2][:, None])
        state = policy.step_tokens(self._returns[-1][:, None], self._states[-1][:, None], self._timesteps[-1][:, None])
        return PendingStep(self, torch.cat([action[:, 0], state[:, 0]], dim=1), self._cached_tokens)

    @torch.no_grad()
    def prepare(self, prev_actions: torch.Tensor) -> bool:
        """Slide a full window now, with the actions just chosen, so the next step is an incremental one.

        The next :meth:`begin` would otherwise re-encode the kept steps in front of its decision (a slide
        every ``window - keep_steps`` steps, the tail of the decision time). Called between decisions (the
        agent calls it once its answer is out), it moves that work off the critical path: the kept steps'
        cache here, then ``prev_actions`` and the new step at the next :meth:`begin`, as a full rebuild would
        encode them (equal up to float rounding). Returns whether it slid; a no-op without a cache, before
        the window is full, and with early exit (whose rebuild stops where the decision does).
        """
        if (not self.use_cache or self._cache is None or len(self._returns) < self.policy.window
                or self._exit_check() is not None):
            return False
        device = self.policy.head.weight.device
        keep = self.keep_steps
        actions = [*self._actions, prev_actions.to(device=device, dtype=torch.long).reshape(self.batch_size)]
        for history in (self._returns, self._states, self._timesteps):
            del history[:-keep]
        # the last kept step's action goes in with the next step, as in the incremental path
        self._actions = actions[-keep:-1]
        self.rebuilds += 1
        self.slides_prepared += 1
        self._cache = self._new_cache()
        self._run(PendingStep(self, self.policy.sequence(*self.context()), 0), None)
        return True

    def finish(self, out: StepOutput) -> torch.Tensor:
        """The step's logits from the LM's output: the final head, or the exit head the step stopped at."""
        policy = self.policy
        self.blocks_run = out.blocks_run
        last = out.hidden[:, -1].to(policy.param_dtype)
        if policy.decoder is not None and out.blocks_run < policy.decoder.n_blocks:
            return policy.lever_modules.exit_heads[str(out.blocks_run)](last).float()
        return policy.head(last).float()

    def _new_cache(self) -> list[StreamKv] | DynamicCache:
        policy = self.policy
        if policy.decoder is None:
            return DynamicCache()
        capacity = (policy.window + 1) * policy.tokens_per_step
        return [policy.decoder.new_kv(capacity) for _ in range(self.batch_size)]

    def _run(self, pending: PendingStep, exit_check) -> StepOutput:
        policy = self.policy
        embeds, start = pending.embeds, pending.start
        b, n, _ = embeds.shape
        self._cached_tokens = start + n
        if policy.decoder is None:
            return policy.run_lm(embeds, self._cache, start)
        positions = torch.arange(start, start + n, device=embeds.device).expand(b, n)
        lm_dtype = policy.lm_dtype
        return policy.decoder.forward(embeds.to(lm_dtype), positions, self._cache, exit_check=exit_check)

    def _exit_check(self):
        """Exit at an exit head whose confidence reaches the threshold, for every row of the batch."""
        policy = self.policy
        levers = policy.levers
        if not levers.exit_layers or levers.exit_threshold is None:
            return None

        def check(depth: int, normed: torch.Tensor) -> bool:
            out = policy.lever_modules.exit_heads[str(depth)](normed[:, -1].to(policy.param_dtype)).float()
            return bool((exit_confidence(out, levers.exit_confidence) >= levers.exit_threshold).all())

        return check


def exit_confidence(outputs: torch.Tensor, kind: str) -> torch.Tensor:
    """How sure an exit head is, per row: top softmax probability (``softmax``), or the gap between the best
    and second-best output (``margin``, for heads that regress action values, in scaled reward units)."""
    if kind == "softmax":
        return outputs.softmax(-1).max(-1).values
    top = outputs.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def build_policy(
    config: PolicyConfig, backbone: PreTrainedModel | PeftModel, dtype: torch.dtype = torch.float32
) -> DecisionTransformerPolicy:
    """A policy shaped by ``config`` around ``backbone``: our modules in ``dtype``, on the backbone's device.

    The backbone keeps its own dtype, so training can hold a bf16 LM under fp32 encoders.
    """
    policy = DecisionTransformerPolicy(
        backbone,
        config.features.tokens,
        n_actions=config.n_actions,
        max_timestep=config.max_timestep,
        window=config.window,
        channels=config.channels,
        levers=Levers(**config.levers),
    )
    device = next(backbone.parameters()).device
    for name, module in policy.named_children():
        if name != "backbone":
            module.to(device=device, dtype=dtype)
    return policy


def amortised_tokens_per_decision(tokens_per_step: int, window: int, keep_steps: int) -> float:
    """Tokens the LM encodes per decision at steady state with the cache (documents the slide's cost)."""
    return tokens_per_step * (1 + keep_steps / (window - keep_steps))
