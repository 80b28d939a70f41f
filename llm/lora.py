"""LoRA settings and wiring: low-rank adapters on the attention projections, the LM itself frozen."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

#: Attention projections that get adapters when ``target_modules`` is not given (NetLLM adapts q and v).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "opt": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],  # GPT-2 fuses q, k and v into one projection
}


@dataclass
class LoraSettings:
    """Adapter defaults: rank 16, alpha 32, dropout 0.05 on the q/v projections.

    NetLLM used rank 128 for a 7B model; a rank-16 adapter on a 135M model is a few MB
    and trains as well in our closed-loop tests.
    """

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    def targets_for(self, model_type: str) -> list[str]:
        if self.target_modules is not None:
            return list(self.target_modules)
        try:
            return DEFAULT_TARGETS[model_type]
        except KeyError:
            raise ValueError(
                f"no default LoRA targets for model type {model_type!r} (known: {sorted(DEFAULT_TARGETS)}); "
                "pass target_modules"
            ) from None

    def to_dict(self) -> dict:
        return asdict(self)


def apply_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; every weight of the LM itself stays frozen."""
    model_type = model.config.model_type
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.targets_for(model_type),
        fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D stores weights transposed
        bias="none",
    )
    for param in model.parameters():
        param.requires_grad_(False)
    return get_peft_model(model, config)
