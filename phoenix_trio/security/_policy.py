"""Security policy: which protections each message type requires.

A :class:`Protection` says whether a message is authenticated (HMAC header), has its
payload encrypted and is signed. Encryption and signatures always come with
authentication (the design's ``secure_message`` always authenticates first; the header
also carries the timestamp and nonce that replay protection needs).

A :class:`SecurityPolicy` maps a message type to its protection, most specific rule
first: an exact type, then the longest matching prefix, then the type's taxonomy class
(``control_plane``, ``data_plane``, ``observability``, ``other``: see
:func:`~phoenix_trio.message_class`), then ``default`` (authenticate everything).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .._errors import ConfigurationError
from .._taxonomy import message_class

MESSAGE_CLASSES = ("control_plane", "data_plane", "observability", "other")


@attrs.frozen(slots=True)
class Protection:
    """What a message of some type must carry: authentication, payload encryption, signature."""

    authenticate: bool = True
    encrypt: bool = False
    sign: bool = False

    def __attrs_post_init__(self) -> None:
        if (self.encrypt or self.sign) and not self.authenticate:
            raise ConfigurationError("encryption and signatures come with authentication (authenticate=True)")

    def __str__(self) -> str:
        parts = [name for name in ("authenticate", "encrypt", "sign") if getattr(self, name)]
        return "+".join(parts) or "none"


NONE = Protection(authenticate=False)
AUTHENTICATE = Protection()
ENCRYPT = Protection(encrypt=True)
SIGN = Protection(sign=True)
ENCRYPT_AND_SIGN = Protection(encrypt=True, sign=True)


def _protections(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, Mapping) or not all(type(k) is str and k and isinstance(v, Protection) for k, v in value.items()):
        raise ConfigurationError(f"{attribute.name} must map non-empty strings to Protection values")


def _classes(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _protections(instance, attribute, value)
    unknown = set(value) - set(MESSAGE_CLASSES)
    if unknown:
        raise ConfigurationError(f"unknown message class(es) {sorted(unknown)}; use {', '.join(MESSAGE_CLASSES)}")


def _freeze(value: Mapping[str, Protection]) -> Mapping[str, Protection]:
    return dict(value)


@attrs.frozen(slots=True)
class SecurityPolicy:
    """Protection per message type: ``types`` (exact), ``prefixes``, ``classes``, then ``default``.

    Example: sign and encrypt the control plane, authenticate everything else, let
    telemetry through unprotected::

        SecurityPolicy(classes={"control_plane": ENCRYPT_AND_SIGN},
                       prefixes={"phoenix.telemetry.": NONE})
    """

    types: Mapping[str, Protection] = attrs.field(factory=dict, converter=_freeze, validator=_protections)
    prefixes: Mapping[str, Protection] = attrs.field(factory=dict, converter=_freeze, validator=_protections)
    classes: Mapping[str, Protection] = attrs.field(factory=dict, converter=_freeze, validator=_classes)
    default: Protection = attrs.field(default=AUTHENTICATE, validator=attrs.validators.instance_of(Protection))
    _cache: dict[str, Protection] = attrs.field(init=False, factory=dict, eq=False, repr=False)
    _longest_first: tuple[tuple[str, Protection], ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        ordered = tuple(sorted(self.prefixes.items(), key=lambda item: -len(item[0])))
        object.__setattr__(self, "_longest_first", ordered)

    def protection_for(self, message_type: str) -> Protection:
        """The protection ``message_type`` requires (cached per type)."""
        found = self._cache.get(message_type)
        if found is not None:
            return found
        found = self.types.get(message_type)
        if found is None:
            for prefix, protection in self._longest_first:
                if message_type.startswith(prefix):
                    found = protection
                    break
        if found is None:
            found = self.classes.get(message_class(message_type), self.default)
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[message_type] = found
        return found
