"""The model classes our checkpoint formats can name: each registers itself with `@register`."""

from ._config import BigBirdConfig

MODEL_CLASSES: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: `cls` can be saved and loaded by name (`eqx_bigbird.save` / `load`)."""
    if MODEL_CLASSES.setdefault(cls.__name__, cls) is not cls:
        raise ValueError(f"two model classes named {cls.__name__}")
    return cls


def config_class(cls: type) -> type:
    """The config class a model class is built from (`cls.config_class`; BigBird's by default)."""
    return getattr(cls, "config_class", BigBirdConfig)
