"""What a SIGHUP may change in a running daemon, and what only a restart can.

Live: business hours, holidays, the retry ladder, number rules and blacklist,
detection, the dialer's caps, prompts and timeouts, the abuse limits, logging and
the status file. Not live: anything that would mean dropping the AMI connection,
the database or a listener, and the operator pool's queues. Those keep their
running values until a restart, and every reload names them again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, SecretStr

from callbackd.config import Config

# Top-level keys whose change needs a restart: connections, listeners, the report scheduler.
RESTART_SECTIONS = ("ami", "database", "agi", "http", "mqtt", "reports", "node", "pbx")
# The operator pool is built once from the dialer's; the spool file is open from start to exit.
RESTART_KEYS = ("dialer.queues", "dialer.wrapup", "service.spool_file", "service.spool_max_items")


@dataclass(frozen=True)
class ReloadPlan:
    changed: list[str]  # applied live
    restart_needed: list[str]  # changed in the file, kept as they run
    effective: Config  # the new config with the restart-only parts as they run


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys (one per setting) to comparable values; secrets compare by value, never shown."""
    if isinstance(value, BaseModel):
        out: dict[str, Any] = {}
        for name in type(value).model_fields:
            out.update(flatten(getattr(value, name), f"{prefix}.{name}" if prefix else name))
        return out
    if isinstance(value, SecretStr):
        value = ("secret", value.get_secret_value())
    elif isinstance(value, list):
        value = [v.model_dump() if isinstance(v, BaseModel) else v for v in value]
    return {prefix: value}


def _needs_restart(key: str) -> bool:
    top = key.split(".", 1)[0]
    return top in RESTART_SECTIONS or any(key == k or key.startswith(k + ".") for k in RESTART_KEYS)


def plan(running: Config, new: Config) -> ReloadPlan:
    old_flat, new_flat = flatten(running), flatten(new)
    keys = sorted(k for k in old_flat.keys() | new_flat.keys() if old_flat.get(k) != new_flat.get(k))
    restart = [k for k in keys if _needs_restart(k)]
    live = [k for k in keys if not _needs_restart(k)]
    kept: dict[str, Any] = {name: getattr(running, name) for name in RESTART_SECTIONS}
    for section in {k.split(".", 1)[0] for k in RESTART_KEYS}:
        names = [k.split(".", 1)[1] for k in RESTART_KEYS if k.startswith(section + ".")]
        kept[section] = getattr(new, section).model_copy(
            update={name: getattr(getattr(running, section), name) for name in names}
        )
    return ReloadPlan(live, restart, new.model_copy(update=kept))
