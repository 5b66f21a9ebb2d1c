"""A Kubernetes ConfigMap volume, updated as the kubelet does it."""

import shutil
from pathlib import Path


def configmap_update(volume: Path, generation: str, files: dict[str, str]) -> None:
    """A new timestamped directory, the ``..data`` link swapped by rename, the old directory removed."""
    data = volume / f"..{generation}"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")
    old = (volume / "..data").resolve() if (volume / "..data").is_symlink() else None
    (volume / "..data_tmp").symlink_to(data.name)
    (volume / "..data_tmp").rename(volume / "..data")
    if old is not None:
        shutil.rmtree(old)
