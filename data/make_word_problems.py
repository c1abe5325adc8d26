"""Generate the grade-school math word problems shipped in data/ (word_problems.jsonl and easy_word_problems.jsonl).

Stdlib only, so the data sets can be rebuilt anywhere the repo is checked out:

    python data/make_word_problems.py --seed 0 --n 120 --out data/word_problems.jsonl
    python data/make_word_problems.py --level easy --seed 0 --n 120 --out data/easy_word_problems.jsonl

`--level multi` (the default) uses 2-3 step templates: each picks its numbers so that every
intermediate result is a positive integer and every division is exact; the final answer is then
checked to lie in 1..999. `--level easy` uses one-step templates (one `+`, `-`, `*` or exact
division on numbers of about 2-20) whose answers are checked to lie in 1..499.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

NAMES = [
    ("Mia", "she"),
    ("Liam", "he"),
    ("Ava", "she"),
    ("Noah", "he"),
    ("Zara", "she"),
    ("Omar", "he"),
    ("Lena", "she"),
    ("Ravi", "he"),
    ("Sofia", "she"),
    ("Kenji", "he"),
    ("Amara", "she"),
    ("Diego", "he"),
]
# Plural nouns that read naturally when counted, packed into boxes and handed out.
OBJECTS = ["pencils", "stickers", "marbles", "cookies", "crayons", "stamps", "buttons", "seashells"]
ITEMS = ["book", "kite", "board game", "lamp", "backpack", "puzzle"]
MAX_ANSWER = 999

Template = Callable[[random.Random], tuple[str, int]]


def _person(rng: random.Random) -> tuple[str, str]:
    """Return a name and its capitalised subject pronoun."""
    name, pron = rng.choice(NAMES)
    return name, pron.capitalize()


def _divisible(rng: random.Random, lo: int, hi: int, times: int, by: int) -> int:
    """Pick x in [lo, hi] with x * times divisible by `by`, so the division stays exact."""
    return rng.choice([x for x in range(lo, hi + 1) if x * times % by == 0])


def boxes_give_away(rng: random.Random) -> tuple[str, int]:
    name, pron = _person(rng)
    obj = rng.choice(OBJECTS)
    boxes, each = rng.randint(3, 12), rng.randint(4, 12)
    given = rng.randint(2, boxes * each - 1)
    q = (
        f"{name} has {boxes} boxes with {each} {obj} each. {pron} gives away {given} {obj}. "
        f"How many {obj} does {pron.lower()} have left?"
    )
    return q, boxes * each - given


def packs_share(rng: random.Random) -> tuple[str, int]:
    name, pron = _person(rng)
    obj = rng.choice(OBJECTS)
    friends, each = rng.randint(2, 6), rng.randint(3, 10)
    packs = _divisible(rng, 2, 12, each, friends)
    q = (
        f"{name} buys {packs} packs of {obj} with {each} {obj} in each pack. "
        f"{pron} shares them equally among {friends} friends. How many {obj} does each friend get?"
    )
    return q, packs * each // friends


def buy_change(rng: random.Random) -> tuple[str, int]:
    name, pron = _person(rng)
    item = rng.choice(ITEMS)
    count, price = rng.randint(2, 9), rng.randint(3, 15)
    # The smallest bill that covers the bill leaves a non-zero change (strictly greater).
    bill = next(b for b in (20, 50, 100, 200) if b > count * price)
    q = (
        f"{name} buys {count} copies of a {item} that cost ${price} each and pays with a ${bill} bill. "
        f"How many dollars of change does {pron.lower()} get?"
    )
    return q, bill - count * price


def chairs_rows(rng: random.Random) -> tuple[str, int]:
    rows, per_row, extra = rng.randint(3, 15), rng.randint(4, 12), rng.randint(2, 30)
    q = (
        f"A hall has {rows} rows with {per_row} chairs in each row. "
        f"{extra} more chairs are brought in for a show. How many chairs are in the hall now?"
    )
    return q, rows * per_row + extra


def weekly_savings(rng: random.Random) -> tuple[str, int]:
    name, pron = _person(rng)
    item = rng.choice(ITEMS)
    per_week, weeks = rng.randint(5, 25), rng.randint(3, 10)
    spent = rng.randint(5, per_week * weeks - 1)
    q = (
        f"{name} saves ${per_week} every week for {weeks} weeks, then spends ${spent} on a {item}. "
        f"How many dollars does {pron.lower()} have left?"
    )
    return q, per_week * weeks - spent


def reading_pages(rng: random.Random) -> tuple[str, int]:
    name, _ = _person(rng)
    monday = rng.randint(8, 40)
    total = rng.randint(3 * monday + 5, 3 * monday + 200)
    q = (
        f"{name} reads {monday} pages on Monday and twice as many pages on Tuesday. "
        f"The book has {total} pages. How many pages are left to read?"
    )
    return q, total - 3 * monday


def bake_and_bag(rng: random.Random) -> tuple[str, int]:
    name, pron = _person(rng)
    trays, per_tray, bag = rng.randint(2, 8), rng.randint(6, 15), rng.randint(3, 6)
    baked = trays * per_tray
    # Eat between 1 and `bag` muffins so the rest fills whole bags and at least one bag.
    eaten = baked % bag or bag
    q = (
        f"{name} bakes {trays} trays of muffins with {per_tray} muffins on each tray. {pron} eats {eaten} "
        f"and packs the rest into bags of {bag}. How many bags does {pron.lower()} fill?"
    )
    return q, (baked - eaten) // bag


def more_than_friend(rng: random.Random) -> tuple[str, int]:
    (name, _), (friend, _) = rng.sample(NAMES, 2)
    obj = rng.choice(OBJECTS)
    have, more = rng.randint(5, 200), rng.randint(2, 150)
    q = f"{name} has {have} {obj}. {friend} has {more} more {obj} than {name}. How many {obj} do they have together?"
    return q, have + (have + more)


def bus_stops(rng: random.Random) -> tuple[str, int]:
    start = rng.randint(15, 60)
    off1 = rng.randint(1, start - 1)
    on1 = rng.randint(1, 30)
    off2 = rng.randint(1, start - off1 + on1 - 1)
    q = (
        f"A bus starts with {start} passengers. At the first stop {off1} people get off and {on1} get on. "
        f"At the second stop {off2} people get off. How many passengers are on the bus now?"
    )
    return q, start - off1 + on1 - off2


def split_pizza(rng: random.Random) -> tuple[str, int]:
    friends, price = rng.randint(2, 6), rng.randint(6, 18)
    pizzas = _divisible(rng, 2, 12, price, friends)
    q = (
        f"A group of {friends} friends order {pizzas} pizzas that cost ${price} each. "
        f"They split the bill equally. How many dollars does each friend pay?"
    )
    return q, pizzas * price // friends


def factory_days(rng: random.Random) -> tuple[str, int]:
    per_hour, hours = rng.randint(4, 20), rng.randint(2, 8)
    days = rng.randint(2, max(2, MAX_ANSWER // (per_hour * hours)))
    q = (
        f"A workshop packs {per_hour} boxes every hour and works {hours} hours a day. "
        f"How many boxes does it pack in {days} days?"
    )
    return q, per_hour * hours * days


TEMPLATES: list[Template] = [
    boxes_give_away,
    packs_share,
    buy_change,
    chairs_rows,
    weekly_savings,
    reading_pages,
    bake_and_bag,
    more_than_friend,
    bus_stops,
    split_pizza,
    factory_days,
]


# --- easy level: one arithmetic step per problem -------------------------------------------------

# Short first names; the easy templates use names only, so no pronouns are needed.
EASY_NAMES = [name for name, _ in NAMES] + ["Sam", "Leo", "Ana", "Ben", "Ella", "Tom", "Yuki", "Nia"]
EASY_OBJECTS = ["apples", "stickers", "marbles", "cookies", "pencils", "crayons", "balloons", "cards", "shells"]
EASY_MAX_ANSWER = 499


def easy_buys_more(rng: random.Random) -> tuple[str, int]:
    name, obj = rng.choice(EASY_NAMES), rng.choice(EASY_OBJECTS)
    have, more = rng.randint(2, 20), rng.randint(2, 20)
    q = f"{name} has {have} {obj} and buys {more} more. How many {obj} does {name} have now?"
    return q, have + more


def easy_gets_more(rng: random.Random) -> tuple[str, int]:
    name, friend = rng.sample(EASY_NAMES, 2)
    obj = rng.choice(EASY_OBJECTS)
    have, more = rng.randint(2, 20), rng.randint(2, 20)
    q = f"{name} has {have} {obj}. {friend} gives {name} {more} more {obj}. How many {obj} does {name} have now?"
    return q, have + more


def easy_gives_away(rng: random.Random) -> tuple[str, int]:
    name, obj = rng.choice(EASY_NAMES), rng.choice(EASY_OBJECTS)
    have = rng.randint(5, 30)
    given = rng.randint(2, have - 1)
    q = f"{name} has {have} {obj} and gives away {given}. How many {obj} are left?"
    return q, have - given


def easy_loses(rng: random.Random) -> tuple[str, int]:
    name, obj = rng.choice(EASY_NAMES), rng.choice(EASY_OBJECTS)
    had = rng.randint(5, 30)
    lost = rng.randint(2, had - 1)
    q = f"{name} had {had} {obj} and lost {lost} of them. How many {obj} does {name} have now?"
    return q, had - lost


def easy_bags_each(rng: random.Random) -> tuple[str, int]:
    name, obj = rng.choice(EASY_NAMES), rng.choice(EASY_OBJECTS)
    bags, each = rng.randint(2, 10), rng.randint(2, 12)
    q = f"{name} has {bags} bags with {each} {obj} in each bag. How many {obj} does {name} have?"
    return q, bags * each


def easy_packs_each(rng: random.Random) -> tuple[str, int]:
    name, obj = rng.choice(EASY_NAMES), rng.choice(EASY_OBJECTS)
    packs, each = rng.randint(2, 10), rng.randint(2, 12)
    q = f"{name} buys {packs} packs of {obj}. Each pack has {each} {obj}. How many {obj} does {name} buy?"
    return q, packs * each


def easy_share(rng: random.Random) -> tuple[str, int]:
    name, obj = rng.choice(EASY_NAMES), rng.choice(EASY_OBJECTS)
    # Pick the quotient first so the division is exact.
    friends, each = rng.randint(2, 8), rng.randint(2, 10)
    q = f"{name} shares {friends * each} {obj} equally among {friends} friends. How many {obj} does each friend get?"
    return q, each


def easy_fill_boxes(rng: random.Random) -> tuple[str, int]:
    name, obj = rng.choice(EASY_NAMES), rng.choice(EASY_OBJECTS)
    size, boxes = rng.randint(2, 10), rng.randint(2, 10)
    q = f"{name} puts {size * boxes} {obj} into boxes of {size}. How many boxes does {name} fill?"
    return q, boxes


EASY_TEMPLATES: list[Template] = [
    easy_buys_more,
    easy_gets_more,
    easy_gives_away,
    easy_loses,
    easy_bags_each,
    easy_packs_each,
    easy_share,
    easy_fill_boxes,
]

# level -> (templates, id prefix, largest allowed answer)
LEVELS: dict[str, tuple[list[Template], str, int]] = {
    "multi": (TEMPLATES, "wp", MAX_ANSWER),
    "easy": (EASY_TEMPLATES, "easy", EASY_MAX_ANSWER),
}


def make_problems(seed: int, n: int, level: str = "multi") -> list[dict[str, str]]:
    """Return n distinct problems as {"id", "question", "answer"} dicts, deterministic in seed and level."""
    templates, prefix, max_answer = LEVELS[level]
    rng = random.Random(seed)
    seen: set[str] = set()
    problems: list[dict[str, str]] = []
    while len(problems) < n:
        question, answer = rng.choice(templates)(rng)
        # Templates with few free numbers can repeat; a duplicate would leak between splits.
        if question in seen or not 0 < answer <= max_answer:
            continue
        seen.add(question)
        problems.append({"id": f"{prefix}-{len(problems):04d}", "question": question, "answer": str(answer)})
    return problems


def to_jsonl(problems: list[dict[str, str]]) -> str:
    """Serialise with sorted keys so the bytes depend only on the problems."""
    return "".join(json.dumps(p, sort_keys=True, ensure_ascii=False) + "\n" for p in problems)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--level", choices=sorted(LEVELS), default="multi", help="multi: 2-3 step problems; easy: one step"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--out", type=Path, help="default: data/word_problems.jsonl or data/easy_word_problems.jsonl")
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).with_name(
        "word_problems.jsonl" if args.level == "multi" else "easy_word_problems.jsonl"
    )
    # newline="" keeps "\n" line endings on every platform, so the file is byte-identical.
    with out.open("w", encoding="utf-8", newline="") as fh:
        fh.write(to_jsonl(make_problems(args.seed, args.n, args.level)))


if __name__ == "__main__":
    main()
