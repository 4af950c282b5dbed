"""canon.weights: released checkpoints for canon's torchvision- and timm-compatible models.

    import canon
    from canon.weights import class_names, preprocess
    model = canon.create_model("resnet50", weights="torchvision")   # downloads, checks, loads strictly
    model.canon_preprocessing    # {"resize": 232, "crop": 224, "interpolation": "bilinear", "mean": ..., ...}
    x = preprocess(pil_image, model.canon_preprocessing)[None]
    names = class_names(model.canon_preprocessing["categories"])   # the 1,000 ImageNet names

Lower level: :func:`released_weights` (the table), :func:`download` (cache with hash check),
:func:`read_state_dict` (safetensors or ``torch.load(weights_only=True)``),
:func:`load_released_weights` (all of it, with the key renames) and
:func:`load_state_dict_strict` (strict loading that explains misfits).
"""
from canon.weights.loading import (SOURCES, LoadReport, WeightsError, adapt_state_dict, class_names, download,
                                   list_released, load_released_weights, load_state_dict_strict, preprocessing_of,
                                   read_state_dict, register_state_dict_adapter, released_weights, weights_home)
from canon.weights.preprocess import preprocess
from canon.weights.released import (RELEASED, Preprocessing, ReleasedWeights, hash_prefix_of,
                                    register_released_weights)

__all__ = ["SOURCES", "RELEASED", "Preprocessing", "ReleasedWeights", "LoadReport", "WeightsError",
           "released_weights", "list_released", "class_names", "weights_home", "download", "read_state_dict",
           "register_state_dict_adapter", "adapt_state_dict", "load_state_dict_strict", "load_released_weights",
           "preprocessing_of", "preprocess", "hash_prefix_of", "register_released_weights"]
