"""Synthetic GSM8K problems in the JSON-lines layout ({"question", "answer"}): the offline default of t5_qa.

Templates of one- and two-step word problems, answered the way GSM8K answers them (a sentence per step
with a calculator annotation, then '#### N'); large results sometimes carry thousands commas and
temperatures go below zero, as in the real set.
"""
from __future__ import annotations

import random

_NAMES = "Natalia Weng Betty Julie James Albert Mark Tina Ken Rose Omar Lena Priya Diego Hana Ivan".split()
_ITEMS = "apples pencils stickers cookies marbles books stamps cards shells eggs buttons candles".split()
_MONTHS = "January February March April May June July August September October".split()


def _number(n: int, rng: random.Random) -> str:
    return f"{n:,}" if abs(n) >= 1000 and rng.random() < 0.5 else str(n)


def _problem(rng: random.Random) -> dict:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(5, 90), rng.randint(2, 60)
        c = rng.randint(1, a + b)
        s, r = a + b, a + b - c
        q = (f"{name} had {a} {item}. {name} bought {b} more and then gave {c} to a friend. "
             f"How many {item} does {name} have now?")
        steps = [f"After buying more, {name} had {a} + {b} = <<{a}+{b}={s}>>{s} {item}.",
                 f"After giving some away, {name} has {s} - {c} = <<{s}-{c}={r}>>{r} {item}."]
    elif kind == 1:
        a = 2 * rng.randint(3, 60)
        m1, m2 = rng.sample(_MONTHS, 2)
        h, r = a // 2, a + a // 2
        q = (f"{name} sold {a} {item} in {m1}, and then sold half as many {item} in {m2}. "
             f"How many {item} did {name} sell altogether in {m1} and {m2}?")
        steps = [f"{name} sold {a}/2 = <<{a}/2={h}>>{h} {item} in {m2}.",
                 f"{name} sold {a}+{h} = <<{a}+{h}={r}>>{r} {item} altogether in {m1} and {m2}."]
    elif kind == 2:
        a, b = rng.randint(2, 25), rng.randint(2, 9)
        p = a * b
        c = rng.choice([x for x in (20, 50, 100, 200, 500) if x > p] or [1000])
        r = c - p
        q = f"{name} buys {b} {item} at ${a} each and pays with a ${c} bill. How much change does {name} get?"
        steps = [f"The {item} cost {b} * {a} = $<<{b}*{a}={p}>>{p}.",
                 f"{name} gets {c} - {p} = $<<{c}-{p}={r}>>{r} in change."]
    elif kind == 3:
        a, b, c = rng.randint(12, 250), rng.randint(2, 12), rng.randint(2, 30)
        d, r = a * b, a * b * c
        q = f"A workshop makes {a} {item} every hour. It works {b} hours a day. How many {item} does it make in {c} days?"
        steps = [f"In one day it makes {a} * {b} = <<{a}*{b}={d}>>{d} {item}.",
                 f"In {c} days it makes {d} * {c} = <<{d}*{c}={r}>>{r} {item}."]
    elif kind == 4:
        a, b = rng.randint(-10, 30), rng.randint(3, 40)
        r = a - b
        q = (f"The temperature was {a} degrees Fahrenheit at noon. By midnight it had dropped by {b} degrees. "
             "What was the temperature at midnight?")
        steps = [f"The temperature at midnight was {a} - {b} = <<{a}-{b}={r}>>{r} degrees Fahrenheit."]
    else:
        b, r = rng.randint(2, 12), rng.randint(2, 30)
        a = b * r
        q = f"{name} has {a} {item} and shares them equally among {b} friends. How many {item} does each friend get?"
        steps = [f"Each friend gets {a} / {b} = <<{a}/{b}={r}>>{r} {item}."]
    return {"question": q, "answer": "\n".join(steps + [f"#### {_number(r, rng)}"])}


def generate_gsm8k(n: int, seed: int = 0) -> list[dict]:
    """``n`` GSM8K-format problems; problem i depends only on (seed, i)."""
    return [_problem(random.Random(f"labkit-gsm8k-{seed}-{i}")) for i in range(n)]
