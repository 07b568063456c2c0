"""Model adapters, one file per family, registered by config content."""

from fastervlm.models.base import GenerationSettings, Generated, ModelAdapter, adapter_for, register_adapter

__all__ = ["GenerationSettings", "Generated", "ModelAdapter", "adapter_for", "register_adapter"]
