"""tinylm: from raw text to a trained small language model and an honest report about it."""
__version__ = "0.1.0"

from .config import Config, build_config  # noqa: E402
from .errors import TinyLMError  # noqa: E402

__all__ = ["Config", "build_config", "TinyLMError", "__version__"]
