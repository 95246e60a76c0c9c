"""PyTorch custom ops of medexport (registered on import)."""

from .mediator_attention import mediator_attention, mediator_attention_reference

__all__ = ["mediator_attention", "mediator_attention_reference"]
