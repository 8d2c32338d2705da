"""torchdistill's side of bench/peer_compare.py, run with the peer virtualenv's Python.

Reads the run's settings (JSON) from argv[1], trains the teacher -> student pair with
torchdistill's DistillationBox (its data loader, forward hooks, KDLoss and loop) and
prints one JSON line: the training images/s of each epoch. The teacher's weights are the
trained ones kdcore's side loads.

Only this benchmark imports torchdistill, from its own virtualenv (.bench/, never the
service's). Some of its helpers load files in ways that can run code (`torch.load(...,
weights_only=False)` in main_util, `pickle.load` in file_util, `yaml.FullLoader` in
yaml_util); this script calls none of them: its config is a dict built here, the
teacher's weights come through safetensors, and the data is the digits folder that
peer_compare.py wrote. No client bytes reach it. The models are kdcore's
modules (the same on both sides), so the frameworks are what differ."""

from __future__ import annotations

import json
import sys
import time

import torch
from safetensors.torch import load_file
from torchdistill.core.distillation import DistillationBox
from torchvision import transforms
from torchvision.datasets import ImageFolder

from kdcore.models import build_model


def main(cfg: dict) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(cfg["threads"])
    steps = [transforms.Grayscale(1)]
    if cfg["crop_padding"]:
        steps.append(transforms.RandomCrop(cfg["image_size"], padding=cfg["crop_padding"]))
    steps += [transforms.ToTensor(), transforms.Normalize([cfg["mean"]], [cfg["std"]])]
    train = ImageFolder(cfg["folder"], transform=transforms.Compose(steps))
    shape = (1, cfg["image_size"], cfg["image_size"])
    teacher = build_model(cfg["teacher"], len(train.classes), shape)
    teacher.load_state_dict(load_file(cfg["teacher_weights"]))
    student = build_model(cfg["student"], len(train.classes), shape)
    epochs = cfg["epochs"]
    config = {
        "num_epochs": epochs,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": torch.utils.data.RandomSampler, "kwargs": {}},
            "kwargs": {
                "batch_size": cfg["batch_size"],
                "num_workers": cfg["workers"],
                "drop_last": True,
            },
        },
        "teacher": {"sequential": [], "forward_proc": "forward_batch_only", "requires_grad": False},
        "student": {"sequential": [], "forward_proc": "forward_batch_only", "requires_grad": True},
        "optimizer": {
            "key": "SGD",
            "kwargs": {"lr": cfg["lr"], "momentum": 0.9, "weight_decay": cfg["weight_decay"]},
        },
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": epochs}},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {
                "sub_terms": {
                    "kd": {
                        "criterion": {
                            "key": "KDLoss",
                            "kwargs": {
                                "student_module_path": ".",
                                "student_module_io": "output",
                                "teacher_module_path": ".",
                                "teacher_module_io": "output",
                                "temperature": cfg["temperature"],
                                "alpha": cfg["ce_weight"],  # alpha CE + (1 - alpha) T^2 KL
                                "reduction": "batchmean",
                            },
                        },
                        "weight": 1.0,
                    }
                }
            },
        },
    }
    device = torch.device(cfg["device"])
    box = DistillationBox(teacher, student, {"train": train}, config, device, None, False, 1)
    rates = []
    for epoch in range(epochs):
        box.pre_epoch_process(epoch=epoch)
        images, start = 0, time.perf_counter()
        for sample_batch, targets, supp_dict in box.train_data_loader:
            loss = box.forward_process(sample_batch.to(device), targets.to(device), supp_dict)
            box.post_forward_process(loss=loss)
            images += len(targets)
        rates.append(images / (time.perf_counter() - start))
        box.post_epoch_process()
    import torchdistill

    return {"images_per_s": rates, "version": torchdistill.__version__}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
