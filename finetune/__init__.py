"""finetune: transfer learning from ImageNet backbones on a folder of your own images."""
