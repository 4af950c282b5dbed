"""Print docs/models.md's table: every registered model, its task, parameters, multiply-adds at its
default input and its layout.   python examples/model_table.py > docs/models.md

Parameters and multiply-adds are counted on the meta device (shapes only, nothing allocated).
Detectors' multiply-adds depend on how many proposals a model keeps, and token models' on the
sequence length, so the table gives their parameters and `canon info MODEL` the rest.
"""
import torch

import canon
from canon.engine.summary import count_parameters, summarize

IMAGE_TASKS = ("classification", "segmentation", "generation")


def macs(n: float) -> str:
    return f"{n / 1e9:.2f} G" if n >= 1e8 else f"{n / 1e6:.2f} M"


def main() -> None:
    print("# Models\n")
    print("Every registered model (`python examples/model_table.py` prints this page). Parameters at the")
    print("registry's default classes (1000 for ImageNet classifiers, 21 for segmentation, 91 for COCO")
    print("detectors), multiply-adds at the default input (`canon info MODEL` prints the per-layer table).")
    print('"torchvision"/"timm" means the `state_dict` keys and shapes are that library\'s model of the same')
    print("name, so its checkpoints load with `strict=True`; the tests compare outputs against an independent")
    print("re-implementation on the same weights. A generative model's multiply-adds are its forward pass's:")
    print("a GAN's discriminator (its forward), a likelihood model's whole network.\n")
    print("| model | task | parameters | multiply-adds | input | layout |")
    print("|---|---|---:|---:|---|---|")
    for name in canon.list_models():
        info = canon.model_info(name)
        with torch.device("meta"):
            model = canon.create_model(name) if info.task != "detection" else None
        if model is None:  # detectors build anchors from real tensors
            model = canon.create_model(name)
        params = count_parameters(model)
        count = "see `canon info`"
        if info.task in IMAGE_TASKS:
            count = macs(summarize(model, (1, *info.input_size)).macs)
        size = "x".join(map(str, info.input_size)) or "tokens"
        print(f"| {name} | {info.task} | {params:,} | {count} | {size} | {info.compatible_with or '-'} |")


if __name__ == "__main__":
    main()
