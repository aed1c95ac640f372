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
    OBJECTIVES,
    POS_ENCODINGS,
    RANGES,
    SECTIONS,
    Config,
    DataConfig,
    EvalConfig,
    GPTConfig,
    LoggingConfig,
    OptimConfig,
    Range,
    TrainConfig,
    check_ranges,
    folder_error,
    numeric_type,
)

__all__ = [
    "DATA_MODES", "INITS", "INIT_MODES", "INIT_NONLINEARITIES", "OBJECTIVES", "POS_ENCODINGS", "RANGES",
    "RESUME_CHANGEABLE", "SECTIONS", "Config", "DataConfig", "EvalConfig", "GPTConfig", "LoggingConfig",
    "OptimConfig", "Range", "TrainConfig", "apply_overrides", "build_config", "changeable_on_resume",
    "check_ranges", "config_reference", "folder_error", "load_config", "numeric_type", "parse_override",
    "read_yaml", "resume_config",
]  # fmt: skip
