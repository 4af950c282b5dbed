"""canon: the classic deep-learning canon as working, verified software."""
from canon.registry import create_model, list_models, model_info, register_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_info", "register_model", "__version__"]
