"""The ExtractConfig the tests extract with: tiny encoders, no worker processes, center crop (fast)."""


def extract_config(root, out, models_dir, **overrides):
    from mmfer.core.config import ExtractConfig

    return ExtractConfig(root=str(root), out=str(out), preset="tiny", models_dir=str(models_dir),
                         num_workers=overrides.pop("num_workers", 0), face_crop=overrides.pop("face_crop", "center"),
                         **overrides)


VARIED_DURATIONS_S = (0.5, 2.9, 0.9, 1.7, 2.3, 1.2)   # clips of different lengths, a long one beside short ones


def write_varied_manifest(folder):
    """A manifest (csv) of demo clips of VARIED_DURATIONS_S, 2 speakers x 3 labels: audio of different lengths,
    which a batch padded together would make depend on each other."""
    from pathlib import Path

    from mmfer.data.demo import write_demo_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, duration_s in enumerate(VARIED_DURATIONS_S):
        label = ("calm", "happy", "sad")[i % 3]
        write_demo_clip(folder / f"v{i}.mp4", label, 1 + i % 2, duration_s=duration_s, size_px=64)
        rows.append(f"v{i},v{i}.mp4,{label},s{i % 2}")
    manifest = folder / "clips.csv"
    manifest.write_text("clip_id,video_path,label,speaker\n" + "\n".join(rows) + "\n")
    return manifest


def store_files(path) -> dict[str, bytes]:
    """Every file of a store (metadata, every chunk, statuses, reasons, sources) by relative path; in an entry's
    zarr.json the encoder's recorded location is left out, since it says where this store sits relative to the
    encoder files (cache_schema.md) and so differs between two stores in other folders by design."""
    import json
    from pathlib import Path

    path = Path(path)
    files = {}
    for p in sorted(path.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        if p.name == "zarr.json" and b'"location"' in data:
            meta = json.loads(data)
            meta.get("attributes", {}).get("encoder", {}).pop("location", None)
            data = json.dumps(meta, sort_keys=True).encode()
        files[str(p.relative_to(path))] = data
    return files


def assert_same_store(ours, reference) -> None:
    mine, theirs = store_files(ours), store_files(reference)
    assert sorted(mine) == sorted(theirs), sorted(set(mine) ^ set(theirs))[:10]
    differing = [name for name in theirs if mine[name] != theirs[name]]
    assert not differing, f"{len(differing)} of {len(theirs)} files differ, e.g. {differing[:5]}"
