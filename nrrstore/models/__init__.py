"""Architectures, teacher checkpoints, CAM and BatchNorm-statistics hooks."""

from __future__ import annotations

from nrrstore.models.bn_stats import BNStatsLoss
from nrrstore.models.cam import CamModel
from nrrstore.models.checkpoint import Teacher, file_sha256, load_teacher, save_teacher, state_dict_sha256
from nrrstore.models.convnet import ConvNet
from nrrstore.models.registry import ARCHS, build_model
from nrrstore.models.resnet import ResNet, resnet18

__all__ = [
    "ARCHS",
    "BNStatsLoss",
    "CamModel",
    "ConvNet",
    "ResNet",
    "Teacher",
    "build_model",
    "file_sha256",
    "load_teacher",
    "resnet18",
    "save_teacher",
    "state_dict_sha256",
]
