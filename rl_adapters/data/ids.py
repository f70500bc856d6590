"""Dataset ids: the ``a+b`` / ``<ns>/<env>/medium-expert`` grammar, and whether an id exists locally."""

from __future__ import annotations

import os
import re
import warnings

from .types import DatasetError, DatasetNotFoundError

__all__ = ["check_dataset_available", "resolve_dataset_ids", "unknown_id_error"]

_MIX_RE = re.compile(r"^(?P<prefix>.*/)?(?P<a>[a-z]+)-(?P<b>[a-z]+)(?P<version>-v\d+)?$")
# Names that are single datasets although they contain a dash.
_SINGLE_NAMES = {"medium-replay", "full-replay"}


def resolve_dataset_ids(spec: str) -> list[str]:
    """Turn a dataset spec into the Minari ids it concatenates.

    ``"a+b"`` concatenates ``a`` and ``b``.  ``<ns>/<env>/medium-expert[-vN]`` (D4RL's mix) resolves
    to ``<ns>/<env>/medium-vN + <ns>/<env>/expert-vN`` (``-v0`` when no version is given) unless a
    dataset with exactly that id exists locally.
    """
    parts = [p.strip() for p in spec.split("+") if p.strip()]
    if not parts:
        raise DatasetError(
            f"dataset spec {spec!r} is empty; pass a Minari id such as 'suite/hopper/medium-v0'"
        )
    out: list[str] = []
    for part in parts:
        m = _MIX_RE.match(part)
        name = part.rsplit("/", 1)[-1]
        base = re.sub(r"-v\d+$", "", name)
        if (
            m
            and base not in _SINGLE_NAMES
            and m.group("a") in {"medium", "random"}
            and not _exists_locally(part)
        ):
            prefix, version = m.group("prefix") or "", m.group("version") or "-v0"
            out += [f"{prefix}{m.group('a')}{version}", f"{prefix}{m.group('b')}{version}"]
        else:
            out.append(part)
    return out


def _exists_locally(dataset_id: str) -> bool:
    from minari.storage.datasets_root_dir import get_dataset_path

    try:
        return (get_dataset_path(dataset_id) / "data" / "metadata.json").exists()
    except (OSError, ValueError):  # malformed ids are reported by load_dataset with a better message
        return False


def unknown_id_error(dataset_id: str, cause: Exception | None = None) -> DatasetNotFoundError:
    import minari

    root = os.environ.get("MINARI_DATASETS_PATH")
    where = f"MINARI_DATASETS_PATH={root}" if root else "~/.minari/datasets (MINARI_DATASETS_PATH is not set)"
    try:
        with warnings.catch_warnings():  # a broken dataset elsewhere in the root is not this error
            warnings.filterwarnings("ignore", message="Misconfigured dataset named", category=UserWarning)
            local = sorted(minari.list_local_datasets().keys())
    except (OSError, ValueError, KeyError):  # a broken root must not hide the original error
        local = []
    shown = ", ".join(local[:8]) + (f" and {len(local) - 8} more" if len(local) > 8 else "") if local else "none"
    return DatasetNotFoundError(
        f"--dataset {dataset_id}: not found under {where} (local datasets: {shown}); set "
        f"MINARI_DATASETS_PATH to the absolute path of the folder holding it, download an official one "
        f"with `minari download {dataset_id}`, or build a suite with "
        f"`bilevel-rl make-dataset --env Hopper-v5 --namespace suite/hopper`"
        + (f" ({type(cause).__name__})" if cause is not None and not isinstance(cause, FileNotFoundError) else "")
    )


def check_dataset_available(spec: str) -> None:
    """Raise :class:`DatasetNotFoundError` (one line) unless every id of ``spec`` exists locally.

    The same test ``minari.load_dataset`` makes, without opening anything: cheap enough to run before a
    run creates its output directory.
    """
    from minari.storage.datasets_root_dir import get_dataset_path

    for dataset_id in resolve_dataset_ids(spec):
        try:
            found = (get_dataset_path(dataset_id) / "data").exists()
        except (OSError, ValueError):
            found = False
        if not found:
            raise unknown_id_error(dataset_id)
