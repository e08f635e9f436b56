"""The simulated conversations: who says what in each kind of call, with consistent details.

Pure data and string building: a :class:`Script` is a whole conversation as it goes when nothing
interrupts it, drawn from a seeded :class:`random.Random` through :class:`Facts` (names, dates,
ids). :mod:`callstream.simulate` turns scripts into timed events and plays them.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["SCRIPTS", "Facts", "Say", "Script", "Tool", "Turn", "agent", "user"]


# -- script building blocks ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Say:
    """One utterance, heard as growing partials and then one final."""

    speaker: str
    text: str


@dataclass(frozen=True, slots=True)
class Tool:
    """One function the agent calls; emitted as a function.call/function.result pair."""

    name: str
    args: dict[str, Any]
    result: dict[str, Any]


Turn = Say | Tool


@dataclass(frozen=True, slots=True)
class Script:
    """A whole conversation as it goes when nothing interrupts it."""

    turns: list[Turn]
    reason: str  # why the call ended when it completes
    queue: str  # where a transfer goes


class Facts:
    """Random but consistent details (names, dates, ids) a script draws from."""

    FIRST: Final = ("Maria", "James", "Aisha", "Daniel", "Priya", "Tom", "Sofia", "Kenji", "Laura")
    LAST: Final = ("Garcia", "Johnson", "Okafor", "Müller", "Patel", "Nguyen", "Rossi", "Smith")
    CITIES: Final = ("Sacramento", "Phoenix", "Austin", "Tampa", "Denver", "San Diego")

    def __init__(self, rng: random.Random, today: dt.date) -> None:
        self.rng = rng
        self.today = today
        self.first = rng.choice(self.FIRST)
        self.last = rng.choice(self.LAST)

    def code(self, prefix: str, digits: int = 5) -> str:
        return f"{prefix}-{self.rng.randrange(10 ** (digits - 1), 10**digits)}"

    def phone(self) -> str:
        return f"+1555{self.rng.randrange(1_000_000, 9_999_999)}"

    def day(self, earliest: int = 1, latest: int = 9) -> dt.date:
        return self.today + dt.timedelta(days=self.rng.randint(earliest, latest))

    def time(self, first_hour: int = 9, last_hour: int = 16) -> dt.time:
        return dt.time(self.rng.randint(first_hour, last_hour), self.rng.choice((0, 15, 30, 45)))


def _spoken_day(day: dt.date) -> str:
    return f"{day:%A}, {day:%B} {day.day}"


def _spoken_time(at: dt.time) -> str:
    hour = at.hour % 12 or 12
    suffix = "AM" if at.hour < 12 else "PM"
    return f"{hour}:{at.minute:02d} {suffix}" if at.minute else f"{hour} {suffix}"


def _iso(day: dt.date, at: dt.time) -> str:
    return dt.datetime.combine(day, at).isoformat(timespec="minutes")


def agent(text: str) -> Say:
    return Say("agent", text)


def user(text: str) -> Say:
    return Say("user", text)


# -- the conversations ----------------------------------------------------------------------------


def _clinic(f: Facts) -> Script:
    rng = f.rng
    doctor = rng.choice(("Chen", "Okonkwo", "Alvarez", "Hoffman"))
    symptom, days = rng.choice(("sore throat", "bad cough", "rash on my arm", "earache")), rng.randint(2, 6)
    born = dt.date(rng.randint(1950, 2004), rng.randint(1, 12), rng.randint(1, 28))
    day1, day2 = sorted({f.day(1, 4), f.day(5, 8)})
    t1, t2 = f.time(8, 11), f.time(13, 16)
    patient, confirmation = f.code("P", 6), f.code("RFC", 4)
    pick_day, pick_time = rng.choice(((day1, t1), (day2, t2)))
    return Script(
        turns=[
            agent("Thank you for calling Riverside Family Clinic, this is Ava, the virtual "
                   "assistant. How can I help you today?"),
            user(f"Hi, I'd like to see Dr. {doctor}. I've had a {symptom} for about {days} days."),
            agent("I'm sorry to hear that. Can I have your full name and date of birth?"),
            user(f"Sure, it's {f.first} {f.last}, born {born:%B} {born.day}, {born.year}."),
            Tool("find_patient",
                 {"last_name": f.last, "date_of_birth": born.isoformat()},
                 {"patient_id": patient, "first_name": f.first, "insurance": "Aetna PPO"}),
            Tool("check_availability",
                 {"provider": f"Dr. {doctor}", "visit_type": "sick_visit",
                  "date_from": day1.isoformat(), "date_to": day2.isoformat()},
                 {"slots": [_iso(day1, t1), _iso(day2, t2)]}),
            agent(f"Thanks, {f.first}, I found your record. Dr. {doctor} can see you on "
                   f"{_spoken_day(day1)} at {_spoken_time(t1)}, or on {_spoken_day(day2)} at "
                   f"{_spoken_time(t2)}. Which works better?"),
            user(f"{pick_day:%A} at {_spoken_time(pick_time)} is perfect."),
            Tool("book_appointment",
                 {"patient_id": patient, "provider": f"Dr. {doctor}",
                  "start": _iso(pick_day, pick_time), "visit_type": "sick_visit",
                  "reason": symptom},
                 {"status": "booked", "confirmation": confirmation}),
            agent(f"You're all set for {_spoken_day(pick_day)} at {_spoken_time(pick_time)} "
                   f"with Dr. {doctor}. Your confirmation number is {confirmation}. Please "
                   "arrive ten minutes early and bring your insurance card. Anything else?"),
            user("No, that's everything. Thank you!"),
            agent(f"You're welcome, {f.first}. Feel better soon, goodbye!"),
        ],
        reason="appointment booked",
        queue="front_desk",
    )


def _router(f: Facts) -> Script:
    rng = f.rng
    color = rng.choice(("orange", "red", "amber"))
    account, ticket, phone = f.code("NW", 7), f.code("TCK", 6), f.phone()
    loss = round(rng.uniform(6, 25), 1)
    visit = f.day(1, 3)
    window = rng.choice(("8 AM and noon", "noon and 4 PM", "1 PM and 5 PM"))
    return Script(
        turns=[
            agent("Northwind Fiber support, this is Sam. What can I do for you?"),
            user(f"My internet keeps dropping every few minutes and the light on the router is "
                  f"blinking {color}."),
            agent("That sounds frustrating. What's the phone number on the account?"),
            user(f"It's {phone[2:5]} {phone[5:8]} {phone[8:]}."),
            Tool("lookup_account", {"phone": phone},
                 {"account_id": account, "name": f"{f.first} {f.last}", "plan": "Fiber 500",
                  "router_model": "NW-AX3000"}),
            Tool("run_line_diagnostics", {"account_id": account},
                 {"line_status": "degraded", "packet_loss_pct": loss, "signal_dbm": -27.4}),
            agent(f"Thanks, {f.first}. I see about {loss:g} percent packet loss on your line. "
                   "Could you unplug the router for thirty seconds and plug it back in?"),
            user("Okay, hold on. Alright, it's back on, but the light is still blinking."),
            agent("Thanks for trying that. The router needs a technician, so I'll open a "
                   "ticket for you."),
            Tool("create_ticket",
                 {"account_id": account, "category": "hardware", "priority": "high",
                  "summary": f"NW-AX3000 blinking {color}, {loss:g}% packet loss after reboot"},
                 {"ticket_id": ticket, "status": "open"}),
            Tool("check_availability",
                 {"service": "technician_visit", "account_id": account},
                 {"windows": [f"{visit.isoformat()} {window}"]}),
            agent(f"Your ticket number is {ticket}. A technician can come on "
                   f"{_spoken_day(visit)} between {window}. Does that work for you?"),
            user("Yes, that works."),
            Tool("schedule_visit", {"ticket_id": ticket, "date": visit.isoformat(),
                                    "window": window},
                 {"status": "scheduled"}),
            agent("Great, you'll get a text the morning of the visit. Anything else today?"),
            user("No, thanks for your help."),
            agent("Have a good day!"),
        ],
        reason="ticket created, technician visit scheduled",
        queue="tier2_support",
    )


def _solar(f: Facts) -> Script:
    rng = f.rng
    city, bill = rng.choice(f.CITIES), rng.choice((140, 180, 220, 260, 310))
    zip_code = f"{rng.randint(85001, 95999)}"
    kw = round(bill / 30, 1)
    savings = round(bill * rng.uniform(0.55, 0.8))
    opening: list[Turn] = [
        agent(f"Hi, is this {f.first}? This is Max calling from Brightside Solar. Do you have a "
               "quick minute?"),
        user("Uh, sure. What is this about?"),
        agent(f"We're helping homeowners in {city} cut their electric bill with rooftop solar. "
               "Do you own your home, and roughly what is your monthly bill?"),
        user(f"We own it. The bill is around {bill} dollars in the summer."),
        Tool("estimate_savings",
             {"zip": zip_code, "monthly_bill_usd": bill, "roof_orientation": "south"},
             {"system_kw": kw, "est_monthly_savings_usd": savings, "payback_years": 7.5,
              "federal_tax_credit_pct": 30}),
        agent(f"Based on that, a {kw} kilowatt system could save you about {savings} dollars a "
               "month, with a thirty percent federal tax credit. Would a free site survey be "
               "worth it to you?"),
    ]
    if rng.random() < 0.4:
        return Script(
            turns=[
                *opening,
                user("I'm not really interested right now, thanks."),
                Tool("update_lead", {"phone": f.phone(), "status": "not_interested"},
                     {"updated": True}),
                agent("No problem at all. Thanks for your time, and have a great day."),
            ],
            reason="lead not interested",
            queue="sales_specialist",
        )
    day, at = f.day(2, 7), f.time(9, 15)
    survey = f.code("SV", 5)
    return Script(
        turns=[
            *opening,
            user("That sounds interesting. What would the next step be?"),
            Tool("check_availability", {"service": "site_survey", "zip": zip_code},
                 {"slots": [_iso(day, at)]}),
            agent(f"A surveyor can come by on {_spoken_day(day)} at {_spoken_time(at)}. It "
                   "takes about an hour. Does that work?"),
            user("Yes, that's fine."),
            Tool("book_appointment",
                 {"service": "site_survey", "start": _iso(day, at),
                  "customer": f"{f.first} {f.last}", "zip": zip_code},
                 {"status": "booked", "confirmation": survey}),
            agent(f"You're booked, confirmation {survey}. You'll get an email with the details. "
                   "Thanks, and talk soon!"),
        ],
        reason="site survey booked",
        queue="sales_specialist",
    )


def _restaurant(f: Facts) -> Script:
    rng = f.rng
    party, day = rng.randint(2, 8), f.day(0, 6)
    wanted = dt.time(rng.choice((18, 19, 20)), rng.choice((0, 30)))
    later = (dt.datetime.combine(day, wanted) + dt.timedelta(minutes=45)).time()
    phone, reservation = f.phone(), f.code("R", 4)
    return Script(
        turns=[
            agent("Good evening, Trattoria Lucia, how can I help you?"),
            user(f"Hi, I'd like a table for {party} on {day:%A} at {_spoken_time(wanted)}."),
            Tool("check_availability",
                 {"party_size": party, "date": day.isoformat(), "time": f"{wanted:%H:%M}"},
                 {"available": False, "alternatives": [f"{later:%H:%M}"]}),
            agent(f"I'm sorry, {_spoken_time(wanted)} is fully booked, but I can offer "
                   f"{_spoken_time(later)}. Would that work?"),
            user(f"{_spoken_time(later)} is fine. Oh, and one of us has a nut allergy."),
            agent("Noted, I'll let the kitchen know. What name and phone number should I put "
                   "the reservation under?"),
            user(f"{f.first} {f.last}, {phone[2:5]} {phone[5:8]} {phone[8:]}."),
            Tool("create_reservation",
                 {"party_size": party, "start": _iso(day, later), "name": f"{f.first} {f.last}",
                  "phone": phone, "notes": "nut allergy"},
                 {"reservation_id": reservation, "status": "confirmed"}),
            agent(f"You're confirmed for {party} on {_spoken_day(day)} at "
                   f"{_spoken_time(later)}, under {f.last}. See you then!"),
            user("Thank you, bye!"),
        ],
        reason="reservation confirmed",
        queue="host_stand",
    )


def _billing(f: Facts) -> Script:
    rng = f.rng
    amount = round(rng.uniform(40, 160), 2)
    fee = rng.choice((10.0, 15.0, 25.0))
    customer, txn, fee_txn = f.code("C", 7), f.code("TX", 8), f.code("TX", 8)
    declined = f.today - dt.timedelta(days=rng.randint(5, 20))
    return Script(
        turns=[
            agent("Thanks for calling Vista Mobile billing. How can I help?"),
            user(f"My payment didn't go through this month and now I've been charged a "
                  f"{fee:.0f} dollar late fee. That's not fair."),
            agent("I understand, let's sort it out. Can you confirm the account holder's name "
                   "and the ZIP code on the account?"),
            user(f"{f.first} {f.last}, and the ZIP is {rng.randint(10001, 99950)}."),
            Tool("lookup_customer", {"name": f"{f.first} {f.last}"},
                 {"customer_id": customer, "balance_due": amount + fee, "autopay": True}),
            Tool("list_transactions", {"customer_id": customer, "since": declined.isoformat()},
                 {"transactions": [
                     {"id": txn, "amount": amount, "status": "declined",
                      "decline_reason": "card_expired", "date": declined.isoformat()},
                     {"id": fee_txn, "amount": fee, "type": "late_fee", "status": "posted"},
                 ]}),
            agent(f"I see the autopay of {amount} dollars on {declined:%B} {declined.day} was "
                   "declined because the card on file had expired."),
            user("Oh, I got a new card last month. Can you waive the late fee?"),
            Tool("waive_fee", {"transaction_id": fee_txn, "reason": "first_occurrence"},
                 {"status": "approved", "credit": fee}),
            agent(f"Done, I've credited the {fee:.0f} dollar fee. Would you like a secure link "
                   "by text to update your card and pay the balance?"),
            user("Yes, please send it."),
            Tool("send_payment_link", {"customer_id": customer, "channel": "sms"},
                 {"sent": True, "expires_in_minutes": 30}),
            agent("It's on its way. Is there anything else I can help with?"),
            user("No, that's it. Thanks."),
        ],
        reason="late fee waived, payment link sent",
        queue="billing_specialist",
    )


SCRIPTS: Final[dict[str, Callable[[Facts], Script]]] = {
    "clinic_appointment": _clinic,
    "router_support": _router,
    "solar_outbound": _solar,
    "restaurant_reservation": _restaurant,
    "billing_dispute": _billing,
}
