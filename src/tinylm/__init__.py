"""tinylm: from raw text to a trained small language model and an honest report about it."""
__version__ = "0.1.0"

from .config import Config, build_config
from .errors import TinyLMError

__all__ = ["Config", "TinyLMError", "__version__", "build_config"]
