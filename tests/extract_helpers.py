"""The ExtractConfig the tests extract with: tiny encoders, no worker processes, center crop (fast)."""


def extract_config(root, out, models_dir, **overrides):
    from mmfer.pipeline.config import ExtractConfig

    return ExtractConfig(root=str(root), out=str(out), preset="tiny", models_dir=str(models_dir),
                         num_workers=overrides.pop("num_workers", 0), face_crop=overrides.pop("face_crop", "center"),
                         **overrides)
