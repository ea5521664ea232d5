"""The wandb package's own record types, imported lazily (the ``wandb`` optional extra).

A transaction log holds ``wandb.proto.wandb_internal_pb2.Record`` messages; parsing them
with the SDK's generated classes keeps the mirror in step with the SDK's schema, and the
SDK's ``proto_util`` encodes telemetry and metric records the way its sender puts them in
a run's ``config._wandb`` (``t``, ``m``). ``wandb`` is an optional extra
(``pip install 'wandb-mirror[wandb]'``), so nothing here imports it at module level.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from types import ModuleType
from typing import Any

from mirror.errors import ConfigError

__all__ = ["encode_proto", "message_dict", "parser", "wandb_proto"]


@cache
def wandb_proto() -> ModuleType:
    """``wandb.proto.wandb_internal_pb2``, or a :class:`ConfigError` naming the extra."""
    try:
        from wandb.proto import wandb_internal_pb2
    except ImportError as exc:
        raise ConfigError(
            f"reading offline wandb runs needs the wandb package ({exc})",
            hint="Install the extra: pip install 'wandb-mirror[wandb]'.",
        ) from exc
    return wandb_internal_pb2


def parser() -> Callable[[bytes], Any]:
    """A function turning one record's bytes into a ``Record`` message."""
    record_type = wandb_proto().Record

    def parse(data: bytes) -> Any:
        msg = record_type()
        msg.ParseFromString(data)
        return msg

    return parse


def encode_proto(message: Any) -> dict[str, Any]:
    """The SDK's compact form of a telemetry/metric record (field numbers as keys)."""
    from wandb.sdk.lib.proto_util import proto_encode_to_dict

    return {str(k): v for k, v in proto_encode_to_dict(message).items()}


def message_dict(message: Any) -> dict[str, Any]:
    """A message as protobuf's JSON mapping (the SDK's ``wandb-metadata.json`` keys)."""
    from google.protobuf.json_format import MessageToDict

    return dict(MessageToDict(message))
