"""Synthetic instruction/response pairs ({"prompt", "response"}): the offline default of gpt2_sft.

Short instructions (reverse a list, sort numbers, add, pick the animal, ...) whose responses follow a rule,
so a model can learn them in minutes.
"""
from __future__ import annotations

import random

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "purple", "orange"]
ANIMALS = ["cat", "dog", "horse", "mouse", "tiger", "rabbit", "sheep", "eagle"]
FRUITS = ["apple", "pear", "grape", "lemon", "mango", "cherry", "peach", "plum"]
WORDS = COLOURS + ANIMALS + FRUITS


def _reverse(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 5))
    return f"Reverse the list: {', '.join(words)}", ", ".join(reversed(words))


def _sort(rng: random.Random) -> tuple[str, str]:
    numbers = rng.sample(range(1, 100), rng.randint(3, 5))
    return f"Sort from smallest to largest: {' '.join(map(str, numbers))}", " ".join(map(str, sorted(numbers)))


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."


def _pick(rng: random.Random) -> tuple[str, str]:
    groups = [("an animal", ANIMALS), ("a fruit", FRUITS), ("a colour", COLOURS)]
    rng.shuffle(groups)
    (kind, members), *others = groups
    answer = rng.choice(members)
    options = [answer] + [rng.choice(group) for _, group in others]
    rng.shuffle(options)
    return f"Which word is {kind}: {', '.join(options)}?", answer


def _upper(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Write in capital letters: {word}", word.upper()


def _repeat(rng: random.Random) -> tuple[str, str]:
    word, n = rng.choice(WORDS), rng.randint(2, 4)
    return f"Repeat the word {word} {n} times.", " ".join([word] * n)


KINDS = (_reverse, _sort, _add, _pick, _upper, _repeat)


def generate_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` instruction/response pairs, the kinds in turn (so the first few test prompts differ in kind).

    The test split is drawn with another seed: new samples of the same rules, though kinds with few
    possible prompts (capital letters of one of 24 words) repeat training prompts.
    """
    rng = random.Random(seed)
    return [dict(zip(("prompt", "response"), KINDS[i % len(KINDS)](rng))) for i in range(n)]
