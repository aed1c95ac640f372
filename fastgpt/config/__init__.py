"""Configuration: the dataclasses (``schema``) and run configs read from YAML plus ``section.key=value``
overrides (``loading``).

A config has the sections ``model`` (``GPTConfig`` fields, or ``preset: NAME`` plus overrides),
``data`` (``DataConfig``), ``train``, ``optim``, ``eval`` and ``logging``.
"""

from fastgpt.config.loading import (
    RESUME_CHANGEABLE,
    apply_overrides,
    build_config,
    changeable_on_resume,
    config_reference,
    load_config,
    parse_override,
    read_yaml,
    resume_config,
)
from fastgpt.config.schema import (
    DATA_MODES,
    INIT_MODES,
    INIT_NONLINEARITIES,
    INITS,
    MAX_SPECIAL_TOKEN_WEIGHT,
    MAX_WORKERS,
    MODEL_LIMITS,
    OBJECTIVES,
    POS_ENCODINGS,
    SECTIONS,
    TRAIN_LIMITS,
    Config,
    DataConfig,
    EvalConfig,
    GPTConfig,
    LoggingConfig,
    OptimConfig,
    TrainConfig,
    folder_error,
)

__all__ = [
    "DATA_MODES", "INITS", "INIT_MODES", "INIT_NONLINEARITIES", "MAX_SPECIAL_TOKEN_WEIGHT", "MAX_WORKERS",
    "MODEL_LIMITS", "OBJECTIVES", "POS_ENCODINGS", "RESUME_CHANGEABLE", "SECTIONS", "TRAIN_LIMITS", "Config",
    "DataConfig", "EvalConfig", "GPTConfig", "LoggingConfig", "OptimConfig", "TrainConfig", "apply_overrides",
    "build_config", "changeable_on_resume", "config_reference", "folder_error", "load_config", "parse_override",
    "read_yaml", "resume_config",
]  # fmt: skip
