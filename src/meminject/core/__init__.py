"""The core layer under every other: errors, paths, interrupts, redaction and progress bars.

Nothing here imports another meminject layer; every layer may import this one.
"""

from ._errors import ConfigError, DataError, MemInjectError, ModelError, TrackingError, error_line, first_line
from ._paths import cache_dir, conf_dir, mlruns_dir, outputs_dir, preset_dirs, project_root, user_conf_dir
from ._progress import progress_bar, stage
from ._redaction import redact, redacted_config, redacted_container

__all__ = [
    "MemInjectError",
    "ConfigError",
    "DataError",
    "ModelError",
    "TrackingError",
    "first_line",
    "error_line",
    "project_root",
    "conf_dir",
    "user_conf_dir",
    "preset_dirs",
    "cache_dir",
    "mlruns_dir",
    "outputs_dir",
    "progress_bar",
    "stage",
    "redact",
    "redacted_config",
    "redacted_container",
]
