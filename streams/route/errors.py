"""Typed errors of the route stage: configuration problems fail at compile time, never per event."""

from __future__ import annotations


class RouteError(ValueError):
    """Base class of every route-stage error."""


class RoutePolicyError(RouteError):
    """A destination policy (allow-list, transform, key, profile) cannot be compiled."""


class ConsentError(RouteError):
    """A Consent resource or serialised ConsentState is malformed."""


class TriggerError(RouteError):
    """A workflow trigger (condition syntax, duration) cannot be compiled."""


class PreviewInputError(RouteError):
    """The input given to ``clinstream preview`` cannot be read or understood."""
