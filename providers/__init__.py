"""SMS gateways behind one interface: a module per provider, a registry from name to class.

Everything a caller needs is exported here: `from providers import Provider, Outcome, ...`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.android import AndroidProvider
from providers.base import (
    COMMON_SETTINGS,
    Delivery,
    DeliveryReport,
    Outcome,
    Provider,
    ReportSink,
    SendResult,
    Setting,
    Shared,
)
from providers.console import ConsoleProvider
from providers.http_gateway import HttpGatewayProvider
from providers.oneclick import OneClickProvider
from providers.probe import ProbeProvider
from providers.smpp import SmppProvider
from providers.smsaero import SmsAeroProvider
from providers.twilio import TwilioProvider

PROVIDERS: dict[str, type[Provider]] = {
    provider.name: provider for provider in (ConsoleProvider, OneClickProvider, TwilioProvider, SmsAeroProvider,
                                             ProbeProvider, HttpGatewayProvider, SmppProvider, AndroidProvider)
}

__all__ = ["COMMON_SETTINGS", "PROVIDERS", "Delivery", "DeliveryReport", "Outcome", "Provider", "ReportSink",
           "SendResult", "Setting", "Shared", "create_provider"]


def create_provider(name: str, values: Mapping[str, Any], shared: Shared) -> Provider:
    """The provider `name`, built from its settings as config read them."""
    return PROVIDERS[name].from_settings(values, shared)
