"""Augmentation ops and presets, mixup/cutmix, test-time crop sets."""
