"""What makes simulated calls look like a campaign rather than a burst: who is on each call, when
calls arrive, how long they last and where each one is when the simulation picks it up.

Pure and seeded (no I/O, no clock): :mod:`callstream.simulate` draws from it for every call it
starts, so tests check the distributions without a server.

- **Metadata** (docs/protocol.md, Call metadata; the keys the dashboard shows): the voice agent, the caller's and
  the callee's numbers, the direction, the campaign (one per kind of script, so a campaign's
  calls sound alike) and the customer.
- **Arrivals**: a Poisson process (exponential gaps), as independent callers arrive.
- **Lengths**: a log-normal cap around a median, as call-centre handling times spread; a call
  whose script ends sooner ends sooner.
- **Offsets**: calls that are already going when the simulation starts (the first fill of a
  steady state) join at a random turn of their script, so no two of them speak in lockstep.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

__all__ = ["CAMPAIGNS", "SHAPE_SALT", "CampaignCall", "arrival_gap", "check_options", "draw_call"]

# One campaign per kind of conversation: its name, the direction of its calls, and its agents.
CAMPAIGNS: Final[dict[str, tuple[str, str, tuple[str, ...]]]] = {
    "clinic_appointment": ("clinic-reminders", "outbound", ("Ava", "Noah")),
    "router_support": ("broadband-support", "inbound", ("Max", "Iris", "Leo")),
    "solar_outbound": ("solar-spring-offer", "outbound", ("Ruby", "Theo")),
    "restaurant_reservation": ("restaurant-bookings", "inbound", ("Mia",)),
    "billing_dispute": ("billing-support", "inbound", ("Ella", "Omar", "Zoe")),
}
COMPANY_LINE: Final = "+14155550100"  # the contact centre's own number
CUSTOMERS: Final = ("Maria Garcia", "James Johnson", "Aisha Okafor", "Daniel Müller", "Priya Patel",
                    "Tom Nguyen", "Sofia Rossi", "Kenji Smith", "Laura Garcia", "Ben Okafor")
SHAPE_SALT: Final = 0x5EED_CA11  # a call's shape is drawn from its seed XOR this, apart from its words
LENGTH_SIGMA: Final = 0.5  # spread of the log-normal length cap (about ×0.6 to ×1.6 around the median)


@dataclass(frozen=True, slots=True)
class CampaignCall:
    """How one simulated call fits its campaign: its metadata, its length cap, where it joins."""

    metadata: dict[str, str]
    max_length_s: float | None  # None: as long as its script
    skip_turns: int  # turns of its script already behind it when it is first seen
    delay_s: float  # wait before its first event


def check_options(arrival_rate: float | None, rate: float | None, mean_length: float | None) -> None:
    """Refuse options that make no campaign, with a message that says which and why."""
    if arrival_rate is not None and (not math.isfinite(arrival_rate) or arrival_rate <= 0):
        msg = "arrival rate must be a positive number of calls per second"
        raise ValueError(msg)
    if arrival_rate is not None and rate is not None:
        msg = "give either a fixed rate or a Poisson arrival rate, not both"
        raise ValueError(msg)
    if mean_length is not None and (not math.isfinite(mean_length) or mean_length <= 0):
        msg = "mean length must be a positive number of seconds"
        raise ValueError(msg)


def arrival_gap(rng: random.Random, arrival_rate: float) -> float:
    """Seconds until the next call of a Poisson process with ``arrival_rate`` calls a second."""
    return rng.expovariate(arrival_rate)


def draw_call(rng: random.Random, script: str, turns: int, *, mean_length: float | None,
              joining: bool) -> CampaignCall:
    """Draw one call of ``script`` (a key of ``sim_scripts.SCRIPTS``) with ``turns`` turns.

    ``mean_length`` (seconds, at the simulation's speed) is the median of the length cap;
    ``joining`` marks a call of the first fill, which starts at a random turn (never its last)
    after a short random wait, so that the calls of one instant are at different points.
    """
    campaign, direction, agents = CAMPAIGNS.get(script, (script, "inbound", ("Ava",)))
    customer_phone = f"+1555{rng.randrange(1_000_000, 9_999_999)}"
    inbound = direction == "inbound"
    metadata = {
        "agent": rng.choice(agents),
        "from": customer_phone if inbound else COMPANY_LINE,
        "to": COMPANY_LINE if inbound else customer_phone,
        "direction": direction,
        "campaign": campaign,
        "customer": f"{rng.choice(CUSTOMERS)} (CUS-{rng.randrange(10_000, 99_999)})",
    }
    cap = None if mean_length is None else rng.lognormvariate(math.log(mean_length), LENGTH_SIGMA)
    skip = rng.randrange(turns) if joining and turns > 1 else 0
    delay = rng.uniform(0.0, 2.0) if joining else 0.0
    return CampaignCall(metadata, cap, skip, delay)
