"""The embedded corpus: deterministic DialogSum-format records for runs without a dataset.

The machine this code runs on often has no network, so DialogSum cannot be downloaded. This
module generates a stand-in with the same record layout, used by the default `t5x-lite train`
(span corruption on ``dialogue``) and by the fine-tuning, reward-model and PPO recipes
(``dialogue`` -> ``summary``; ``toxic_summary`` as the rejected/penalised variant).

Each record comes from one of ~50 everyday scenes (shopping, a doctor visit, a job interview,
...) whose turns are slot-filled templates (names, items, prices, times, places, numbers) with
several phrasings per turn; the reference summary is filled from the same slots, so every
number and name in a summary also occurs in its dialogue and summarisation is learnable.

    from t5x_lite import corpus
    records = corpus.generate(100, seed=0)  # list of dicts, see `make_record`
    data = corpus.splits()                  # {"train": 2000, "validation": 200, "test": 200}
    corpus.write_jsonl(data["train"], "train.jsonl")
    tok = tokenizer.load(corpus.DEFAULT_TOKENIZER_DIR)  # shipped tokenizer, vocab 1024

Record ``i`` depends only on ``(seed, i)``, never on how many records are asked for. Exactly
one record in every five (``i % 5 == 2``) carries ``toxic_summary``, a rude rewrite of its
summary, so any prefix of ``n`` records holds exactly ``round(n * TOXIC_FRACTION)`` of them.

``python -m t5x_lite.corpus [OUT_DIR]`` retrains the shipped tokenizer (``build_tokenizer``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_TOKENIZER_DIR = Path(__file__).parent / "assets" / "tokenizer"

TOXIC_FRACTION = 0.2
_TOXIC_PERIOD = 5  # record i is toxic iff i % 5 == 2: floor((n + 2) / 5) == round(n / 5)
_TOXIC_OFFSET = 2

SPLIT_SIZES = {"train": 2000, "validation": 200, "test": 200}
MIN_TURNS, MAX_TURNS = 4, 10

# Words that mark a toxic summary (all mild insults; the corpus has no slurs or profanity).
INSULT_WORDS = (
    "stupid", "idiot", "shut up", "pathetic", "useless", "dumb", "clueless", "moron", "loser",
    "lazy", "annoying", "fool",
)  # fmt: skip

PathLike = str | os.PathLike
Alt = str | tuple[str, ...]  # one template, or alternative phrasings of it
Sampler = Callable[[random.Random, dict], Any]

# ---------------------------------------------------------------------------- slot pools

NAMES = (
    "Tom", "Mary", "Jack", "Linda", "David", "Susan", "Peter", "Kate", "Mike", "Emma", "Steven",
    "Lucy", "Bill", "Nancy", "Frank", "Helen", "Daniel", "Amy", "George", "Rose", "Sam", "Julia",
    "Henry", "Alice", "Paul", "Sarah", "Mark", "Jenny", "Brian", "Laura", "Kevin", "Anna", "Eric",
    "Grace", "Tony", "Sophie", "Chris", "Olivia", "Jim", "Betty", "Adam", "Fiona", "Ben", "Diana",
    "Ryan", "Karen", "Leo", "Maria", "Oscar", "Wendy",
)  # fmt: skip
SURNAMES = (
    "Smith", "Brown", "Wilson", "Taylor", "Clark", "Lewis", "Walker", "Hall", "Young", "King",
    "Wright", "Baker", "Carter", "Parker", "Evans", "Turner", "Collins", "Morgan", "Cooper",
    "Reed", "Bell", "Ward", "Hughes", "Foster",
)  # fmt: skip
TITLES = ("Mr.", "Ms.", "Mrs.")
CITIES = (
    "Paris", "London", "Tokyo", "Rome", "Sydney", "Berlin", "Madrid", "Boston", "Chicago",
    "Toronto", "Seoul", "Bangkok", "Vienna", "Dublin", "Prague", "Lisbon", "Athens", "Beijing",
    "Shanghai", "Singapore", "Vancouver", "Seattle", "Miami", "Cairo", "Istanbul", "Amsterdam",
)  # fmt: skip
STREETS = (
    "Main Street", "Park Avenue", "Oak Road", "Elm Street", "King Street", "River Road",
    "Church Street", "Maple Avenue", "Hill Street", "Market Street", "Bridge Road", "Queen Street",
)  # fmt: skip
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
COLORS = ("red", "blue", "green", "black", "white", "grey", "brown", "yellow", "pink", "navy")
CLOTHES = (
    "jacket", "sweater", "shirt", "dress", "coat", "skirt", "scarf", "hat", "suit", "blouse",
    "raincoat", "pair of jeans", "pair of shoes", "T-shirt",
)  # fmt: skip
SIZES = ("small", "medium", "large", "extra large")
DISHES = (
    "steak", "pasta", "fried rice", "chicken curry", "fish and chips", "vegetable soup",
    "beef noodles", "Caesar salad", "pizza", "roast duck", "dumplings", "mushroom risotto",
)  # fmt: skip
DRINKS = (
    "coffee", "orange juice", "green tea", "lemonade", "hot chocolate", "iced tea", "apple juice",
    "glass of red wine", "beer",
)  # fmt: skip
RESTAURANTS = (
    "the Golden Dragon", "Luigi's", "the Blue Lagoon", "Bella Vista", "the Olive Tree",
    "Sakura House", "the Red Lantern", "Casa Miguel", "the Silver Spoon", "the Green Garden",
)  # fmt: skip
JOBS = (
    "accountant", "sales manager", "software engineer", "nurse", "teacher", "secretary",
    "marketing assistant", "receptionist", "designer", "translator", "chef", "editor",
)  # fmt: skip
COMPANIES = (
    "Apex Trading", "Sunrise Media", "Bluewater Bank", "Greenfield Foods", "Northstar Software",
    "Maple Insurance", "Orion Motors", "Silverline Travel", "Harbor Logistics", "Crestview Hotels",
)  # fmt: skip
SUBJECTS = (
    "math", "history", "chemistry", "physics", "biology", "English", "economics", "geography",
    "art", "computer science", "literature",
)  # fmt: skip
SYMPTOMS = (
    "headache", "sore throat", "bad cough", "fever", "stomachache", "backache", "earache",
    "skin rash", "runny nose",
)  # fmt: skip
BOOKS = (
    "The Silent River", "Morning Light", "The Glass Garden", "Under the Old Bridge",
    "The Long Road Home", "Letters from the Sea", "The Clockmaker's Daughter", "Seven Blue Doors",
    "The Paper Moon", "A House by the Lake", "Winter Roads", "The Last Lighthouse",
)  # fmt: skip
MOVIES = (
    "Ocean Dreams", "The Last Train", "Midnight City", "Star Hunters", "The Lost Garden",
    "Summer in Venice", "Iron Valley", "The Secret Key", "Blue Horizon", "Dark Forest",
)  # fmt: skip
PETS = ("dog", "cat", "rabbit", "parrot", "hamster", "turtle", "puppy", "kitten")
PET_NAMES = ("Max", "Bella", "Lucky", "Coco", "Buddy", "Daisy", "Charlie", "Milo", "Luna", "Rocky")
GROCERIES = (
    "apples", "eggs", "milk", "bread", "rice", "tomatoes", "cheese", "chicken", "carrots",
    "bananas", "coffee", "onions", "butter", "yogurt", "potatoes", "orange juice",
)  # fmt: skip
ELECTRONICS = (
    "laptop", "camera", "smartphone", "tablet", "printer", "monitor", "speaker", "smartwatch",
    "vacuum cleaner", "microwave", "hair dryer", "coffee machine",
)  # fmt: skip
BRANDS = ("Sonix", "Lumatek", "Orbis", "Nexa", "Veltra", "Kairo", "Zentro", "Polaris")
BANDS = (
    "Blue Harbor", "Silver Echo", "Red Balloon", "Night Owls", "Paper Kites", "Golden Hour",
    "Northern Lights", "Wild Rivers",
)  # fmt: skip
CHORES = (
    "do the dishes", "take out the trash", "clean the bathroom", "vacuum the living room",
    "do the laundry", "water the plants", "cook dinner",
)  # fmt: skip
INSTRUMENTS = ("piano", "guitar", "violin", "drums", "flute", "cello", "saxophone")
PLANTS = (
    "tomatoes", "roses", "tulips", "sunflowers", "carrots", "lettuce", "strawberries", "herbs",
    "peppers", "cucumbers",
)  # fmt: skip
LANGUAGES = ("Spanish", "French", "Chinese", "Japanese", "German", "Italian", "Korean", "Arabic")
COUNTRIES = ("Canada", "Australia", "Germany", "Japan", "France", "Spain", "Ireland", "Sweden")
CAR_BRANDS = ("Toyota", "Ford", "Honda", "Volkswagen", "Nissan", "Mazda", "Volvo")

# ---------------------------------------------------------------------------- samplers


def _pick(*pool: str) -> Sampler:
    return lambda rng, s: rng.choice(pool)


def _num(lo: int, hi: int, step: int = 1) -> Sampler:
    return lambda rng, s: str(rng.randrange(lo, hi + 1, step))


def _clock(lo_hour: int, hi_hour: int) -> Sampler:
    """A time of day such as "7 pm" or "10:30 am", with the hour in [lo_hour, hi_hour]."""

    def sample(rng: random.Random, s: dict) -> str:
        hour = rng.randint(lo_hour, hi_hour)
        minute = rng.choice((0, 0, 15, 30, 45))
        text = str(hour % 12 or 12) + (f":{minute:02d}" if minute else "")
        return f"{text} {'am' if hour < 12 else 'pm'}"

    return sample


def _other(keys: str | tuple[str, ...], sampler: Sampler) -> Sampler:
    """Like ``sampler`` but different from the already drawn slot(s) ``keys``."""
    keys = (keys,) if isinstance(keys, str) else keys

    def sample(rng: random.Random, s: dict) -> Any:
        taken = {s[k] for k in keys}
        for _ in range(100):
            value = sampler(rng, s)
            if value not in taken:
                return value
        raise RuntimeError(f"could not draw a value different from slots {keys}")

    return sample


def _rows(keys: Sequence[str], *rows: Sequence[str]) -> Sampler:
    """Pick one row and bind its cells to ``keys`` (for slots that must agree, e.g. a genre
    and its plural, or a first-person reason and its third-person summary form)."""
    return lambda rng, s: dict(zip(keys, rng.choice(rows), strict=True))


def _calc(fn: Callable[[dict], Any]) -> Sampler:
    return lambda rng, s: str(fn(s))


def _mood(rng: random.Random, s: dict) -> dict:
    """What #Person2# says about an exam score, and how the summary reports it."""
    score = int(s["score"])
    if score >= 80:
        comments, mood = ("I'm really happy with it.", "Better than I expected!"), "is happy"
    elif score >= 60:
        comments, mood = ("It's OK, I guess.", "Not bad, not great."), "thinks it is OK"
    else:
        comments, mood = ("I expected more.", "I'm so disappointed."), "is disappointed"
    return {"comment": rng.choice(comments), "mood": mood}


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front (by sound for the few words where spelling lies)."""
    word = phrase.lower()
    if word.startswith(("one", "uni", "use", "eu")):
        vowel = False
    elif word.startswith(("hour", "honest")):
        vowel = True
    else:
        vowel = word[:1] in "aeiou"
    return f"{'an' if vowel else 'a'} {phrase}"


class _Slots(dict):
    """Slot values for ``str.format_map``: ``{a_item}`` is ``item`` with its article and
    ``{item_cap}`` is ``item`` capitalised (for a slot that starts a sentence)."""

    def __missing__(self, key: str) -> str:
        if key.startswith("a_") and key[2:] in self:
            return _article(self[key[2:]])
        if key.endswith("_cap") and key[:-4] in self:
            value = self[key[:-4]]
            return value[:1].upper() + value[1:]
        raise KeyError(f"template uses undefined slot {key!r}")


# ---------------------------------------------------------------------------- scenes


@dataclasses.dataclass(frozen=True)
class _Scene:
    """One everyday situation: slot samplers, alternating turns (Person1 first), a summary.

    ``endings`` are alternative tails of the dialogue, each with the summary sentence it adds.
    ``greet`` is False for scenes whose first turn already greets (or answers a phone), where a
    generic "Hello." exchange before it would read oddly; ``casual`` scenes are between
    friends, family or colleagues and get casual rather than service-desk small talk.
    """

    topic: str
    slots: dict[str, Sampler]
    turns: tuple[Alt, ...]
    summary: Alt
    endings: tuple[tuple[tuple[Alt, ...], str], ...] = ()
    greet: bool = True
    casual: bool = False


_SELF_GREETING = frozenset({
    "restaurant booking", "apartment rental", "tech support", "dentist appointment",
    "calling in sick", "ordering food", "job interview", "doctor visit", "hotel check-in",
    "haircut", "airport check-in", "coffee shop", "opening a bank account",
})  # fmt: skip
_CASUAL = frozenset({
    "vacation plans", "weather", "birthday party", "exam results", "sports", "movies", "cooking",
    "pets", "moving house", "wedding", "homework", "grocery shopping", "job offer", "apology",
    "gardening", "work meeting", "studying abroad", "housework", "book club", "volunteering",
    "family visit", "learning a language",
})  # fmt: skip


def _scene(topic, slots, turns, summary, endings=()) -> _Scene:
    endings = tuple((tuple(t), tail) for t, tail in endings)
    return _Scene(
        topic, dict(slots), tuple(turns), summary, endings,
        greet=topic not in _SELF_GREETING, casual=topic in _CASUAL,
    )  # fmt: skip


# fmt: off
# A hand-packed table: ruff format would spread it over ~2400 lines of one string each.
# fmt: off
SCENES: tuple[_Scene, ...] = (
    _scene(
        "shopping for clothes",
        {"color": _pick(*COLORS), "item": _pick(*CLOTHES), "price": _num(25, 160, 5),
         "discount": _pick("10", "15", "20", "25", "30"), "size": _pick(*SIZES)},
        [("Excuse me, how much is this {color} {item}?",
          "Could you tell me the price of the {color} {item} in the window?",
          "I really like this {color} {item}. How much does it cost?"),
         ("It's {price} dollars. This week we also give a {discount} percent discount on it.",
          "It costs {price} dollars, but today everything here is {discount} percent off."),
         ("Do you have it in {size}?", "Is there one in {size}? That's my size.")],
        ("#Person1# asks #Person2# about the price of the {color} {item}. #Person2# says it costs "
         "{price} dollars with a {discount} percent discount.",
         "#Person1# wants to buy a {color} {item}. #Person2# says it is {price} dollars and "
         "{discount} percent off this week."),
        [([("Yes, here you are. The fitting room is over there.",
            "Let me check. Yes, we have one in {size}."),
           ("It fits well. I'll take it.", "Great, I'll take it.")],
          "#Person1# tries it in {size} and buys it."),
         ([("Sorry, we only have other sizes now.", "I'm afraid the {size} ones are sold out."),
           ("What a pity. I'll come back next week.", "Oh well, maybe I'll look elsewhere.")],
          "#Person2# doesn't have it in {size}, so #Person1# doesn't buy it.")],
    ),
    _scene(
        "restaurant booking",
        {"restaurant": _pick(*RESTAURANTS), "people": _num(2, 12), "day": _pick(*WEEKDAYS),
         "time": _clock(17, 21), "title": _pick(*TITLES), "name": _pick(*SURNAMES),
         "time2": _other("time", _clock(17, 21))},
        [("Hello, is this {restaurant}? I'd like to book a table for {people} people.",
          "Hi, I'm calling to reserve a table for {people} at {restaurant}."),
         ("Certainly. For which day and what time?", "Sure. When would you like to come?"),
         ("This {day} at {time}, please.", "On {day} evening, around {time}."),
         ("May I have your name, please?", "Can I have a name for the reservation?"),
         ("It's {title} {name}.", "Yes, it's {title} {name}.")],
        ("#Person1# calls {restaurant} to book a table for {people} people on {day} at {time}.",
         "#Person1# reserves a table for {people} at {restaurant} for {day} at {time}."),
        [(["All right, {title} {name}. A table for {people} on {day} at {time}. See you then."],
          "#Person2# confirms the booking under the name {title} {name}."),
         ([("I'm sorry, we're fully booked at {time}. Would {time2} be OK?",
            "I'm afraid {time} is full. We have a table at {time2}."),
           ("Yes, {time2} is fine.", "OK, {time2} works for us.")],
          "The restaurant is full at {time}, so they agree on {time2} instead.")],
    ),
    _scene(
        "ordering food",
        {"dish": _pick(*DISHES), "drink": _pick(*DRINKS), "p1": _num(8, 26), "p2": _num(2, 7),
         "total": _calc(lambda s: int(s["p1"]) + int(s["p2"])),
         "cash": _calc(lambda s: (int(s["p1"]) + int(s["p2"])) // 10 * 10 + 10)},
        [("Are you ready to order?", "Good evening. What would you like today?",
          "Hello, can I take your order?"),
         ("Yes, I'd like the {dish}, please.", "I'll have the {dish}, please.",
          "The {dish} sounds good. I'll take that."),
         ("Good choice. Anything to drink?", "Sure. Would you like something to drink?"),
         ("I'll have {a_drink}.", "Just {a_drink}, thanks."),
         ("OK. That's {p1} for the {dish} and {p2} for the drink, so {total} dollars in total.",
          "Here you are. The {dish} is {p1} dollars and the drink is {p2}, {total} in total.")],
        ("#Person2# orders the {dish} and {a_drink} from #Person1#. The bill is {total} dollars.",
         "#Person1# takes #Person2#'s order of the {dish} with {a_drink}, which comes to {total} "
         "dollars."),
        [([("Can I pay by card?", "Do you take credit cards?"), "Of course."],
          "#Person2# pays by card."),
         ([("Here is {cash} dollars. Keep the change.", "Here's {cash}. You can keep the change.")],
          "#Person2# pays {cash} dollars in cash and leaves the change as a tip.")],
    ),
    _scene(
        "job interview",
        {"job": _pick(*JOBS), "company": _pick(*COMPANIES), "years": _num(2, 12),
         "prev": _other("company", _pick(*COMPANIES)),
         "duty": _pick("customer accounts", "training new staff", "the company website",
                       "monthly reports", "a small team", "key clients"),
         "salary": _num(2500, 6000, 100), "day": _pick(*WEEKDAYS[:5]), "month": _pick(*MONTHS)},
        [("Please sit down. Why do you want to work as {a_job} at {company}?",
          "Good morning. Tell me, why are you interested in the {job} position at {company}?"),
         ("I have {years} years of experience as {a_job}, and I think {company} is a great place "
          "to grow.",
          "I've worked as {a_job} for {years} years, and {company} has a great reputation."),
         ("What did you do in your last job?", "Tell me about your previous job."),
         ("I worked at {prev}, where I was responsible for {duty}.",
          "I was at {prev}. I was in charge of {duty} there."),
         ("What salary do you expect?", "And what are your salary expectations?"),
         ("About {salary} dollars a month.", "I'm hoping for around {salary} dollars a month.")],
        "#Person2# is interviewing for the {job} position at {company}. #Person2# has {years} "
        "years of experience, was responsible for {duty} at {prev}, and expects {salary} dollars "
        "a month.",
        [(["Good. We will call you by {day}."], "#Person1# will call #Person2# by {day}."),
         (["Can you start on the first of {month}?", "Yes, no problem."],
          "#Person2# can start on the first of {month}.")],
    ),
    _scene(
        "doctor visit",
        {"symptom": _pick(*SYMPTOMS), "days": _num(2, 6),
         "freq": _pick("twice a day", "three times a day", "once a day before bed",
                       "every six hours"),
         "rest": _num(2, 5), "day": _pick(*WEEKDAYS[:5])},
        [("What seems to be the problem?", "Good morning. What's wrong with you today?",
          "Come in. How can I help you?"),
         ("I've had {a_symptom} for {days} days.",
          "I've been suffering from {a_symptom} for the past {days} days."),
         ("Let me have a look. Have you taken any medicine?", "I see. Are you taking anything?"),
         ("No, nothing yet.", "Only some aspirin, but it didn't help."),
         ("Take this medicine {freq} and stay at home for {rest} days.",
          "I'll give you some medicine. Take it {freq}, and rest at home for {rest} days.")],
        "#Person2# has had {a_symptom} for {days} days. #Person1# tells #Person2# to take "
        "medicine {freq} and rest for {rest} days.",
        [([("Do I need to come back?", "Should I see you again?"),
           "Yes, come back next {day} if it isn't better."],
          "#Person1# asks #Person2# to come back next {day} if it doesn't get better."),
         ((), "")],
    ),
    _scene(
        "vacation plans",
        {"city": _pick(*CITIES), "companion": _pick(*NAMES), "days": _num(3, 14),
         "month": _pick(*MONTHS),
         "transport": _pick("by train", "by plane", "by car", "by bus", "by boat"),
         "sight": _pick("the old town", "the famous museums", "the beaches", "the night markets",
                        "the castle", "the mountains nearby")},
        [("Do you have any plans for your holiday in {month}?",
          "Where are you going for your vacation this {month}?"),
         ("I'm going to {city} with {companion} for {days} days.",
          "{companion} and I are spending {days} days in {city}."),
         ("Sounds great! How will you get there?", "Lucky you! How are you getting there?"),
         ("We're going {transport}. It's cheaper than I expected.", "We'll travel {transport}."),
         ("What do you want to see there?", "What are you planning to do there?"),
         ("Mainly {sight}. {companion} has been there before.", "We want to visit {sight} first.")],
        "#Person2# tells #Person1# about the plan to go to {city} with {companion} for {days} "
        "days in {month}. They will travel {transport} and visit {sight}.",
    ),
    _scene(
        "weather",
        {"day": _pick(*WEEKDAYS),
         "_w": _rows(("weather", "temp"), ("heavy rain", "12"), ("snow", "2"),
                     ("lots of sunshine", "28"), ("strong wind", "15"), ("thunderstorms", "24"),
                     ("fog in the morning", "9"), ("light rain", "17"), ("clear skies", "31")),
         "activity": _pick("go hiking", "have a picnic", "play tennis", "go to the beach",
                           "go cycling", "wash the car", "paint the fence"),
         "day2": _other("day", _pick(*WEEKDAYS))},
        [("Have you heard the weather forecast for {day}?",
          "Do you know what the weather will be like on {day}?"),
         ("Yes, they said there will be {weather} and the temperature will be around {temp} "
          "degrees.",
          "The radio said {weather}, around {temp} degrees."),
         ("Oh no, I was planning to {activity}.", "Really? We wanted to {activity} that day.")],
        "#Person2# tells #Person1# that there will be {weather} and about {temp} degrees on "
        "{day}. #Person1# planned to {activity}.",
        [([("Maybe you should do it on {day2} instead. It will be nicer.",
            "Why not wait until {day2}? The forecast is better."),
           ("Good idea.", "You're right, {day2} it is.")],
          "#Person2# suggests {day2} instead."),
         (["Don't worry. It should clear up in the afternoon."],
          "#Person2# thinks it will clear up in the afternoon.")],
    ),
    _scene(
        "apartment rental",
        {"rooms": _pick("one-bedroom", "two-bedroom", "three-bedroom", "studio"),
         "street": _pick(*STREETS), "rent": _num(600, 2400, 50), "floor": _num(2, 15),
         "day": _pick(*WEEKDAYS), "time": _clock(9, 18)},
        [("I'm calling about the {rooms} apartment on {street}. Is it still available?",
          "Hi, I saw your ad for the {rooms} apartment on {street}. Is it still for rent?"),
         ("Yes, it is. The rent is {rent} dollars a month.",
          "It is. It's {rent} dollars a month, utilities not included."),
         ("Which floor is it on?", "Is it on a high floor?"),
         ("It's on floor {floor}, and there is a lift.", "Floor {floor}. The view is lovely.")],
        "#Person1# calls #Person2# about the {rooms} apartment on {street}. It costs {rent} "
        "dollars a month and is on floor {floor}.",
        [([("Can I see it this {day}?", "Could I come and have a look on {day}?"),
           ("Sure, come at {time}.", "Of course. How about {time}?")],
          "#Person1# will see it on {day} at {time}."),
         (["That's a bit too expensive for me.",
           "I understand. Let me know if you change your mind."],
          "#Person1# thinks it is too expensive.")],
    ),
    _scene(
        "opening a bank account",
        {"account": _pick("savings account", "checking account", "student account",
                          "joint account"),
         "id": _pick("passport", "driver's license", "ID card"), "deposit": _num(50, 500, 50),
         "amount": _calc(lambda s: int(s["deposit"]) * 2), "days": _num(3, 10)},
        [("Good morning. I'd like to open {a_account}.", "Hi, I want to open {a_account}."),
         ("Certainly. Do you have your {id} with you?", "Sure. May I see your {id}, please?"),
         ("Yes, here it is. Is there a minimum deposit?",
          "Here you are. How much do I need to put in?"),
         ("You need to deposit at least {deposit} dollars.",
          "The minimum deposit is {deposit} dollars."),
         ("OK, I'll deposit {amount} dollars now.", "Then I'll put in {amount} dollars today."),
         ("Fine. Your bank card will arrive by mail in {days} days.",
          "All done. You'll get your card by mail within {days} days.")],
        "#Person1# opens {a_account} with #Person2# at the bank. #Person1# shows {a_id}, deposits "
        "{amount} dollars, and will get a card in {days} days.",
    ),
    _scene(
        "currency exchange",
        {"amount": _num(100, 1000, 50),
         "currency": _pick("euros", "British pounds", "Japanese yen", "Canadian dollars",
                           "Swiss francs", "Mexican pesos", "Thai baht"),
         "fee": _num(2, 10)},
        [("Hi, I'd like to change {amount} US dollars into {currency}.",
          "Can I exchange {amount} US dollars for {currency} here?"),
         ("No problem. There is a service fee of {fee} dollars. Is that OK?",
          "Sure. We charge a {fee} dollar fee for that. Is that all right?"),
         ("That's fine. Could I have some small notes, please?",
          "OK. Can I have it in small bills?"),
         ("Of course. Please sign here.", "Certainly. Just sign this form, please.")],
        "#Person1# changes {amount} US dollars into {currency} with #Person2#. There is a {fee} "
        "dollar service fee, and #Person1# asks for small notes.",
    ),
    _scene(
        "library",
        {"title": _pick(*BOOKS), "first": _pick(*NAMES), "last": _pick(*SURNAMES),
         "shelf": _num(3, 40), "weeks": _num(2, 4), "fine": _pick("10", "20", "25", "50")},
        [("Excuse me, do you have {title} by {first} {last}?",
          "Hi, I'm looking for the book {title} by {first} {last}."),
         ("Let me check. Yes, it's on the second floor, shelf {shelf}.",
          "One moment. You'll find it on shelf {shelf} upstairs."),
         ("How long can I borrow it?", "And how long can I keep it?"),
         ("For {weeks} weeks. If it's late, the fine is {fine} cents a day.",
          "{weeks} weeks. After that there's a fine of {fine} cents a day.")],
        "#Person1# wants to borrow {title} by {first} {last}. #Person2# says it's on shelf "
        "{shelf} and can be kept for {weeks} weeks, with a fine of {fine} cents a day if it's "
        "late.",
    ),
    _scene(
        "birthday party",
        {"friend": _pick(*NAMES), "age": _num(6, 60),
         "nth": _calc(lambda s: _ordinal(int(s["age"]))),
         "place": _pick("at home", "at a karaoke bar", "in the park", "at a pizza restaurant",
                        "at the beach", "at a bowling alley"),
         "day": _pick(*WEEKDAYS), "time": _clock(12, 20),
         "gift": _pick("a scarf", "a book", "a watch", "some flowers", "a board game",
                       "concert tickets", "a photo album")},
        [("Are you coming to {friend}'s birthday party on {day}?",
          "Did you get the invitation to {friend}'s party on {day}?"),
         ("Of course! Where is it going to be?", "Yes! Where is it?"),
         ("It's {place}, starting at {time}. {friend} is turning {age}.",
          "{place_cap}, from {time}. Can you believe {friend} will be {age}?"),
         ("Wow, {age}! What should we buy as a present?", "{age} already! What shall we give?"),
         ("How about {gift}? We could share the cost.", "Maybe {gift}? Let's buy it together."),
         ("Good idea.", "Perfect, let's do that.")],
        "#Person1# and #Person2# are going to {friend}'s {nth} birthday party {place} on {day} at "
        "{time}. They decide to buy {gift} together as a present.",
    ),
    _scene(
        "car repair",
        {"car": _pick(*CAR_BRANDS),
         "_p": _rows(("issue", "fix"),
                     ("the brakes make a strange noise", "replace the brake pads"),
                     ("the engine won't start in the morning", "change the starter"),
                     ("the air conditioning doesn't work", "refill the air conditioning"),
                     ("one of the tires keeps losing air", "replace the tire"),
                     ("the battery keeps dying", "put in a new battery"),
                     ("the headlights don't turn on", "fix the wiring")),
         "cost": _num(80, 900, 10), "day": _pick(*WEEKDAYS[:6])},
        [("Hello, my {car} has a problem: {issue}.",
          "Hi, could you look at my {car}? {issue_cap}."),
         ("Let me take a look. We need to {fix}. It will cost about {cost} dollars.",
          "I see. I'll have to {fix}, which is about {cost} dollars."),
         ("When will it be ready?", "How long will it take?"),
         ("By {day} afternoon.", "You can pick it up on {day} afternoon.")],
        "#Person1# brings the {car} to #Person2# because {issue}. #Person2# needs to {fix}, which "
        "will cost about {cost} dollars and be done by {day}.",
        [(["Fine, please go ahead."], ""),
         (["That's expensive. Can you do it for less?", "Sorry, that's already a fair price."],
          "#Person1# thinks it is expensive, but #Person2# won't lower the price.")],
    ),
    _scene(
        "exam results",
        {"subject": _pick(*SUBJECTS), "score": _num(45, 98), "_m": _mood, "t": _pick(*TITLES),
         "tn": _pick(*SURNAMES), "day": _pick(*WEEKDAYS[:5])},
        [("How did you do on the {subject} exam?", "Did you get your {subject} exam back?"),
         ("I got {score} points. {comment}", "Yes, {score} points. {comment}"),
         ("{t} {tn} said the next test is on {day}.",
          "Well, the next test is on {day}, {t} {tn} told us."),
         ("Then I'd better start studying now.", "Can we study together for that one?")],
        "#Person2# got {score} points on the {subject} exam and {mood}. #Person1# says the next "
        "test is on {day}.",
    ),
    _scene(
        "sports",
        {"sport": _pick("tennis", "basketball", "badminton", "football", "volleyball",
                        "table tennis", "squash", "golf"),
         "day": _pick(*WEEKDAYS), "time": _clock(8, 17), "time2": _other("time", _clock(8, 18)),
         "place": _pick("at the sports center", "in the park", "at the school gym", "at the club"),
         "friend": _pick(*NAMES)},
        [("Do you want to play {sport} with me on {day}?",
          "Are you free on {day}? Let's play {sport}."),
         ("I'd love to. What time?", "Sure. When and where?"),
         ("How about {time} {place}?", "Let's meet {place} at {time}.")],
        "#Person1# invites #Person2# to play {sport} on {day} at {time} {place}.",
        [([("Perfect. Can {friend} come too?", "Great. Do you mind if {friend} joins us?"),
           "Sure, the more the merrier."],
          "{friend} will join them."),
         ([("That's a bit early for me. Can we make it {time2}?", "I'm busy then. Is {time2} OK?"),
           "OK, {time2} then."],
          "They change the time to {time2}.")],
    ),
    _scene(
        "movies",
        {"title": _pick(*MOVIES),
         "_g": _rows(("genre", "genres"), ("comedy", "comedies"), ("horror film", "horror films"),
                     ("love story", "love stories"), ("thriller", "thrillers"),
                     ("science fiction film", "science fiction films"),
                     ("action movie", "action movies"), ("documentary", "documentaries"),
                     ("musical", "musicals")),
         "time": _clock(18, 22),
         "cinema": _pick("the Odeon", "the Star Cinema", "the Grand Theater", "the Plaza"),
         "price": _num(8, 16)},
        [("Would you like to see {title} tonight? It's {a_genre}.",
          "Have you heard of {title}? It's {a_genre}, and it's on tonight."),
         ("Sounds fun. When does it start?", "Maybe. What time is it on?"),
         ("At {time} at {cinema}. Tickets are {price} dollars each.",
          "It starts at {time} at {cinema}, and tickets cost {price} dollars.")],
        "#Person1# invites #Person2# to see {title}, {a_genre}, at {time} at {cinema}. Tickets "
        "cost {price} dollars.",
        [([("Great. I'll buy the popcorn.", "OK, let's go. I'll meet you there.")],
          "#Person2# agrees to go."),
         ([("I don't really like {genres}. How about something else?",
            "Hmm, {genres} aren't my thing."),
           "Then let's just have dinner instead."],
          "#Person2# doesn't like {genres}, so they decide to have dinner instead.")],
    ),
    _scene(
        "cooking",
        {"dish": _pick("banana bread", "apple pie", "lasagna", "chocolate cake", "meat pie",
                       "roast chicken", "baked salmon", "cheesecake", "vegetable bake", "pizza"),
         "ing1": _pick("two eggs", "a cup of milk", "three onions", "some garlic", "fresh basil",
                       "brown sugar", "a lemon", "some butter"),
         "ing2": _other("ing1",
                        _pick("two eggs", "a cup of milk", "three onions", "some garlic",
                              "fresh basil", "brown sugar", "a lemon", "some butter")),
         "minutes": _num(15, 90, 5), "temp": _num(160, 220, 10)},
        [("This {dish} is delicious! How did you make it?",
          "Wow, I love this {dish}. What's your secret?"),
         ("It's easy. You just need {ing1} and {ing2}, plus a few basic things.",
          "Nothing special, really. The key is {ing1} and {ing2}."),
         ("How long does it take?", "Does it take long to make?"),
         ("About {minutes} minutes. Keep the oven at {temp} degrees.",
          "Around {minutes} minutes in the oven at {temp} degrees."),
         ("Could you write the recipe down for me?", "I have to try it at home."),
         ("Sure, I'll send it to you tonight.", "I'll give you the recipe.")],
        "#Person2# tells #Person1# how to make the {dish}. It needs {ing1} and {ing2} and takes "
        "about {minutes} minutes at {temp} degrees. #Person2# will share the recipe.",
    ),
    _scene(
        "pets",
        {"pet": _pick(*PETS), "petname": _pick(*PET_NAMES), "weeks": _num(2, 9),
         "age": _num(2, 12)},
        [("Is that your new {pet}? What's its name?", "What a cute {pet}! Is it yours?"),
         ("Yes, this is {petname}. I got it from the animal shelter {weeks} weeks ago.",
          "Yes, that's {petname}. I adopted it from the animal shelter {weeks} weeks ago."),
         ("How old is {petname}?", "Is {petname} still young?"),
         ("About {age} years old. The vet says {petname} is very healthy.",
          "{petname} is about {age} years old, but still full of energy."),
         ("Can I play with {petname}?", "Does {petname} like people?"),
         ("Sure, {petname} loves people.", "Yes, go ahead and say hello.")],
        "#Person2# shows #Person1# the new {pet}, {petname}, which #Person2# got from the animal "
        "shelter {weeks} weeks ago. {petname} is about {age} years old.",
    ),
    _scene(
        "hotel check-in",
        {"title": _pick(*TITLES), "name": _pick(*SURNAMES),
         "room": _pick("single room", "double room", "twin room", "suite"), "nights": _num(2, 7),
         "number": _num(101, 950), "breakfast": _clock(6, 8), "wake": _clock(5, 8)},
        [("Good evening. I have a reservation under the name {title} {name}.",
          "Hi, I'd like to check in. The name is {title} {name}."),
         ("Welcome, {title} {name}. You booked {a_room} for {nights} nights, is that right?",
          "Yes, {title} {name}, {a_room} for {nights} nights."),
         ("Yes, that's right. What time is breakfast?", "Correct. When is breakfast served?"),
         ("Breakfast starts at {breakfast}. Your room number is {number}.",
          "From {breakfast} in the restaurant. Here's your key for room {number}.")],
        "#Person1# checks in under the name {title} {name} for {nights} nights in {a_room}. "
        "#Person2# gives #Person1# room {number} and says breakfast starts at {breakfast}.",
        [([("Could I get a wake-up call at {wake}?", "Can you wake me up at {wake}?"),
           "Of course."],
          "#Person1# also asks for a wake-up call at {wake}."),
         ((), "")],
    ),
    _scene(
        "lost luggage",
        {"code": _pick("BA", "LH", "AF", "UA", "QF", "KL"), "fnum": _num(101, 989),
         "city": _pick(*CITIES), "color": _pick(*COLORS),
         "bag": _pick("suitcase", "backpack", "travel bag", "duffel bag"),
         "size": _pick("large", "small", "medium-sized"), "hours": _pick("24", "48", "36")},
        [("Excuse me, my luggage didn't come out. I was on flight {code} {fnum} from {city}.",
          "Hi, my bag is missing. I just arrived from {city} on flight {code} {fnum}."),
         ("I'm sorry to hear that. Can you describe your bag?",
          "I'm sorry. What does it look like?"),
         ("It's a {size} {color} {bag} with my name on the tag.",
          "A {size} {color} {bag}. My name is on it."),
         ("Please fill in this form. We'll bring it to your hotel, usually within {hours} hours.",
          "Please fill in this form. Most bags are delivered within {hours} hours.")],
        "#Person1#'s {color} {bag} didn't arrive on flight {code} {fnum} from {city}. #Person2# "
        "asks #Person1# to fill in a form and says bags usually arrive within {hours} hours.",
    ),
    _scene(
        "tech support",
        {"device": _pick("laptop", "printer", "router", "phone", "tablet", "computer"),
         "problem": _pick("keeps freezing", "won't turn on", "can't connect to the internet",
                          "is very slow", "keeps showing an error message"),
         "ticket": _num(10000, 99999), "minutes": _pick("15", "20", "30", "45"),
         "secs": _pick("10", "15", "20", "30")},
        [("Technical support, how can I help you?", "Help desk, this is support speaking."),
         ("Hi, my {device} {problem}.", "Hello, I have a problem. My {device} {problem}."),
         ("Have you tried restarting it?", "OK. Did you turn it off and on again?")],
        "#Person2# calls #Person1# because the {device} {problem}.",
        [([("Yes, twice, but it didn't help.", "Yes, but nothing changed."),
           ("I'll open a ticket for you. The number is {ticket}. A technician will call within "
            "{minutes} minutes.",
            "Then I'll create ticket number {ticket}. Someone will call you in {minutes} "
            "minutes.")],
          "Restarting didn't help, so #Person1# opens ticket {ticket} and says a technician will "
          "call within {minutes} minutes."),
         (["No, not yet.",
           "Please hold the power button for {secs} seconds and turn it on again.",
           ("Oh, it works now! Thank you.", "It's working again. Great!")],
          "#Person1# tells #Person2# to hold the power button for {secs} seconds, and the "
          "{device} works again.")],
    ),
    _scene(
        "gym membership",
        {"fee": _num(25, 80, 5), "months": _pick("3", "6", "12"),
         "low": _calc(lambda s: int(s["fee"]) - 5),
         "classes": _pick("yoga", "spinning", "boxing", "pilates", "aerobics", "swimming"),
         "day": _pick(*WEEKDAYS[:5])},
        [("Hi, I'm interested in joining the gym. How much is the membership?",
          "Hello, how much does it cost to join this gym?"),
         ("It's {fee} dollars a month, or {low} dollars a month if you sign up for {months} "
          "months.",
          "{fee} dollars a month. With a {months}-month contract it's only {low}."),
         ("Does that include classes?", "Are classes included?"),
         ("Yes, including {classes} classes on {day} evenings.",
          "Yes. For example, there are {classes} classes every {day} evening.")],
        "#Person1# asks #Person2# about joining the gym. It costs {fee} dollars a month, or {low} "
        "dollars with a {months}-month contract, and includes {classes} classes on {day} evenings.",
        [(["I'll sign up for {months} months then."], "#Person1# signs up for {months} months."),
         ([("Let me think about it.", "I'll think about it and come back.")],
          "#Person1# wants to think about it.")],
    ),
    _scene(
        "haircut",
        {"style": _pick("just a trim", "a short haircut", "a new style", "a bob", "layers"),
         "cm": _num(2, 8), "price": _num(15, 60, 5), "wait": _pick("10", "15", "20", "30"),
         "time": _clock(10, 17)},
        [("Hello, what can I do for you today?", "Hi, what would you like today?"),
         ("I'd like {style}. Could you cut about {cm} centimeters off?",
          "{style_cap}, please. About {cm} centimeters shorter."),
         ("Sure. It will cost {price} dollars. There's a wait of about {wait} minutes.",
          "No problem. That's {price} dollars, but you'll have to wait about {wait} minutes.")],
        "#Person2# wants {style} with about {cm} centimeters cut off, which costs {price} dollars.",
        [([("No problem, I'll wait.", "That's fine, I can wait.")],
          "#Person2# waits about {wait} minutes."),
         (["I'm in a hurry. Can I come back at {time}?", "Sure, I'll put you down for {time}."],
          "Because of the {wait}-minute wait, #Person2# will come back at {time}.")],
    ),
    _scene(
        "post office",
        {"city": _pick(*CITIES), "weight": _num(1, 10), "cost": _num(30, 90, 5), "days": _num(2, 5),
         "cost2": _calc(lambda s: int(s["cost"]) // 2),
         "days2": _calc(lambda s: int(s["days"]) * 4)},
        [("I'd like to send this package to {city}.", "Hi, how much is it to mail this to {city}?"),
         ("Let me weigh it. It's {weight} kilos. How would you like to send it?",
          "It weighs {weight} kilos. Express or regular mail?"),
         ("What's the fastest way?", "Which one is faster?"),
         ("Express mail. It costs {cost} dollars and takes {days} days.",
          "Express takes {days} days and costs {cost} dollars.")],
        "#Person1# wants to send a package of {weight} kilos to {city}. #Person2# says express "
        "mail costs {cost} dollars and takes {days} days.",
        [(["OK, I'll send it by express mail."], "#Person1# sends it by express mail."),
         (["That's too expensive. What about regular mail?",
           "That's {cost2} dollars, but it takes about {days2} days.", "Regular mail is fine."],
          "#Person1# chooses regular mail for {cost2} dollars, which takes about {days2} days.")],
    ),
    _scene(
        "airport check-in",
        {"city": _pick(*CITIES), "seat": _pick("window", "aisle"),
         "bags": _pick("one suitcase", "two suitcases", "one small bag"),
         "gl": _pick("A", "B", "C", "D"), "gn": _num(2, 30), "boarding": _clock(6, 22)},
        [("Good morning. Where are you flying today?", "Hello. Where are you going today?"),
         ("To {city}. Here's my passport.", "{city}. Here's my ticket and passport."),
         ("Would you like a window or an aisle seat?", "Window or aisle?"),
         ("I'd prefer {a_seat} seat, please.", "{seat_cap}, please."),
         ("Do you have any bags to check?", "Any luggage to check in?"),
         ("Just {bags}.", "Only {bags}."),
         ("Here's your boarding pass. You board at gate {gl}{gn} at {boarding}.",
          "Here you are. Boarding is at {boarding} from gate {gl}{gn}.")],
        "#Person2# checks in with #Person1# for a flight to {city}, gets {a_seat} seat, and "
        "checks {bags}. #Person2# will board at gate {gl}{gn} at {boarding}.",
    ),
    _scene(
        "taxi ride",
        {"dest": _pick("the Central Station", "the Hilton Hotel", "the City Museum", "the airport",
                       "the Grand Theater", "the General Hospital", "the Convention Center"),
         "minutes": _num(10, 45), "time": _clock(7, 21), "fare": _num(12, 60),
         "paid": _calc(lambda s: int(s["fare"]) // 5 * 5 + 5)},
        [("Could you take me to {dest}, please? How long will it take?",
          "{dest_cap}, please. Will it take long?"),
         ("About {minutes} minutes if the traffic is OK.",
          "Around {minutes} minutes, depending on traffic."),
         ("I'm in a hurry. I have to be there by {time}.", "I need to be there by {time}."),
         ("Don't worry, we'll make it. ... Here we are. That's {fare} dollars.",
          "No problem, I know a shortcut. ... OK, here we are. {fare} dollars, please."),
         ("Here's {paid} dollars. Keep the change.", "Here's {paid}. Keep the change.")],
        "#Person2# drives #Person1# to {dest}, which takes about {minutes} minutes. #Person1# "
        "needs to be there by {time} and pays {paid} dollars for the {fare}-dollar fare.",
    ),
    _scene(
        "concert tickets",
        {"band": _pick(*BANDS), "day": _pick(*WEEKDAYS), "price": _num(30, 120, 5),
         "tickets": _num(2, 5), "total": _calc(lambda s: int(s["price"]) * int(s["tickets"]))},
        [("Hi, are there still tickets for {band} on {day}?",
          "Hello, do you have any tickets left for the {band} concert on {day}?"),
         ("Yes, we have seats left at {price} dollars each. How many do you need?",
          "Yes, there are some at {price} dollars each. How many?"),
         ("I need {tickets} tickets.", "{tickets}, please."),
         ("That's {total} dollars in total.", "OK, that comes to {total} dollars."),
         ("Can I pay by credit card?", "Do you take credit cards?"),
         ("Sure.", "Of course.")],
        "#Person1# buys {tickets} tickets for the {band} concert on {day} from #Person2#. They "
        "are {price} dollars each, {total} dollars in total.",
    ),
    _scene(
        "dentist appointment",
        {"dr": _pick(*SURNAMES),
         "problem": _pick("a toothache", "bleeding gums", "a broken tooth", "a lost filling",
                          "a pain in my back tooth"),
         "day": _pick(*WEEKDAYS[:5]), "time": _clock(9, 17),
         "time2": _other("time", _clock(9, 17))},
        [("Dr. {dr}'s office, how can I help you?", "Good morning, Dr. {dr}'s dental office."),
         ("Hi, I have {problem} and I'd like to see the dentist.",
          "Hello, I need an appointment. I have {problem}."),
         ("We have an opening on {day} at {time}. Does that work?",
          "The first free time is {day} at {time}.")],
        "#Person2# calls Dr. {dr}'s office because of {problem}. #Person1# offers an appointment "
        "on {day} at {time}.",
        [([("Yes, that's perfect.", "OK, I'll take it.")], "#Person2# takes the appointment."),
         (["Is there anything earlier? It really hurts.",
           "Then come in today at {time2}. We'll fit you in."],
          "Because it hurts a lot, #Person1# gives #Person2# an appointment today at {time2} "
          "instead.")],
    ),
    _scene(
        "moving house",
        {"street": _pick(*STREETS), "day": _pick(*WEEKDAYS), "boxes": _num(10, 40),
         "friend": _pick(*NAMES)},
        [("I heard you're moving. Where to?", "Is it true that you're moving?"),
         ("Yes, to a new place on {street}. We're moving this {day}.",
          "Yes, to {street}. The truck comes on {day}."),
         ("Do you need any help?", "Can I help you pack?"),
         ("That would be great! I still have {boxes} boxes to pack.",
          "Yes, please! There are still {boxes} boxes to pack."),
         ("I can come over the day before with {friend}.",
          "{friend} and I can come the day before.")],
        "#Person2# is moving to {street} on {day} and still has {boxes} boxes to pack. #Person1# "
        "offers to come over the day before with {friend} to help.",
    ),
    _scene(
        "wedding",
        {"n1": _pick(*NAMES), "n2": _other("n1", _pick(*NAMES)), "month": _pick(*MONTHS),
         "city": _pick(*CITIES), "guests": _num(40, 300, 10),
         "venue": _pick("a small church", "a beach resort", "a garden", "an old castle",
                        "a hotel ballroom", "a farm")},
        [("Did you hear that {n1} and {n2} are getting married?",
          "Guess what? {n1} and {n2} are engaged!"),
         ("Really? When is the wedding?", "That's wonderful! When's the big day?"),
         ("In {month}, in {city}. They're inviting about {guests} guests.",
          "This {month}. It will be in {city} with about {guests} guests."),
         ("Where will the ceremony be?", "Do you know where it will be held?"),
         ("At {venue}. I can't wait.", "At {venue}, I think.")],
        "#Person1# tells #Person2# that {n1} and {n2} are getting married in {city} in {month}. "
        "The wedding will be at {venue} with about {guests} guests.",
    ),
    _scene(
        "noisy neighbours",
        {"apt": _num(1, 40), "apt2": _other("apt", _num(1, 40)),
         "noise": _pick("loud music", "a barking dog", "parties", "drums", "shouting"),
         "late": _pick("11 pm", "midnight", "1 am", "2 am"), "nights": _num(2, 5)},
        [("Hi, I'm your neighbor from apartment {apt}. Sorry to bother you.",
          "Excuse me, I live in apartment {apt}, just below you."),
         ("Hi. Is something wrong?", "Oh, hello. What's the matter?"),
         ("There has been {noise} from your place until {late} for {nights} nights.",
          "For {nights} nights there's been {noise} until {late}. I can't sleep.")],
        "#Person1#, the neighbor from apartment {apt}, complains to #Person2# about {noise} until "
        "{late} for {nights} nights.",
        [([("I'm so sorry. I'll keep it down from now on.", "Sorry, it won't happen again.")],
          "#Person2# apologizes and promises to keep it down."),
         (["That wasn't me. I think it comes from apartment {apt2}."],
          "#Person2# says the noise comes from apartment {apt2}.")],
    ),
    _scene(
        "homework",
        {"subject": _pick(*SUBJECTS), "problems": _num(8, 30),
         "stuck": lambda rng, s: str(rng.randint(1, int(s["problems"]))),
         "day": _pick(*WEEKDAYS[:5])},
        [("Have you finished the {subject} homework?", "Did you do the {subject} homework yet?"),
         ("Not yet. There are {problems} problems and I'm stuck on number {stuck}.",
          "No. It has {problems} problems, and number {stuck} is impossible."),
         ("I can help you. It's due on {day}, right?", "I'll help you. It's due {day}, isn't it?"),
         ("Yes. Can we meet in the library after class?", "Right. Library after class?"),
         ("Sure.", "Sounds good.")],
        "#Person2# hasn't finished the {subject} homework, which has {problems} problems and is "
        "due on {day}. #Person1# will help with number {stuck} in the library after class.",
    ),
    _scene(
        "grocery shopping",
        {"g1": _pick(*GROCERIES), "g2": _other("g1", _pick(*GROCERIES)),
         "g3": _other(("g1", "g2"), _pick(*GROCERIES)), "budget": _num(20, 80, 10),
         "minutes": _num(15, 45, 5)},
        [("I'm going to the supermarket. What do we need?",
          "I'm heading to the store. Do we need anything?"),
         ("We're out of {g1} and {g2}. Oh, and we need {g3} for dinner.",
          "Let me see. {g1_cap}, {g2}, and {g3}."),
         ("Anything else?", "Is that all?"),
         ("No, that's all. Here's {budget} dollars.", "That's it. Take these {budget} dollars."),
         ("OK, I'll be back in {minutes} minutes.", "Thanks. See you in {minutes} minutes.")],
        "#Person2# asks #Person1# to buy {g1}, {g2}, and {g3} at the supermarket and gives "
        "#Person1# {budget} dollars. #Person1# will be back in {minutes} minutes.",
    ),
    _scene(
        "phone plan",
        {"used": _num(4, 40), "data": _calc(lambda s: (int(s["used"]) // 10 + 1) * 10 + 10),
         "price": _num(15, 70, 5), "months": _pick("12", "24")},
        [("I'd like to change my phone plan. I always run out of data.",
          "Hi, my current plan doesn't have enough data. Can I switch?"),
         ("How much data do you use every month?", "Sure. How much data do you usually use?"),
         ("About {used} gigabytes.", "Around {used} gigabytes a month."),
         ("Then I'd recommend our {data} gigabyte plan. It's {price} dollars a month.",
          "Our {data} gigabyte plan would suit you. It costs {price} dollars a month.")],
        "#Person1# uses about {used} gigabytes of data a month and wants a new phone plan. "
        "#Person2# recommends the {data} gigabyte plan for {price} dollars a month.",
        [(["Is there a contract?", "Yes, for {months} months.", "OK, I'll take it."],
          "#Person1# takes it with a {months}-month contract."),
         ([("Sounds good. I'll take it.", "Perfect, sign me up.")], "#Person1# takes it.")],
    ),
    _scene(
        "job offer",
        {"company": _pick(*COMPANIES), "job": _pick(*JOBS), "salary": _num(3000, 8000, 100),
         "vacation": _num(10, 25), "month": _pick(*MONTHS), "dnum": _num(1, 28)},
        [("Guess what? {company} offered me the {job} job!",
          "I got the job! {company} wants me as their new {job}."),
         ("Congratulations! What's the salary like?", "That's great news! Is the pay good?"),
         ("{salary} dollars a month, and I get {vacation} days of paid vacation.",
          "It's {salary} dollars a month, with {vacation} vacation days."),
         ("When do you start?", "So when is your first day?"),
         ("On {month} {dnum}.", "My first day is {month} {dnum}.")],
        "#Person1# tells #Person2# that {company} offered #Person1# the {job} job with a salary "
        "of {salary} dollars a month and {vacation} vacation days. #Person1# starts on {month} "
        "{dnum}.",
        [(["Let's celebrate this weekend!"], "#Person2# suggests celebrating on the weekend."),
         ((), "")],
    ),
    _scene(
        "product complaint",
        {"product": _pick(*ELECTRONICS), "days": _num(2, 20), "price": _num(30, 400, 10),
         "rdays": _num(3, 14)},
        [("I bought this {product} here {days} days ago, and it has already stopped working.",
          "Excuse me, this {product} I bought {days} days ago is broken."),
         ("I'm sorry about that. Do you have the receipt?", "Sorry to hear that. Receipt, please?"),
         ("Yes, here it is. It cost {price} dollars.", "Here. I paid {price} dollars for it.")],
        "#Person1# complains to #Person2# that the {product} bought {days} days ago for {price} "
        "dollars stopped working.",
        [(["We can give you a full refund of {price} dollars.", "Thank you."],
          "#Person2# gives #Person1# a full refund."),
         (["I can replace it with a new one right away.", "That's fine."],
          "#Person2# replaces it with a new one."),
         (["It's still under warranty, so we'll repair it for free. It takes {rdays} days."],
          "#Person2# will repair it for free, which takes {rdays} days.")],
    ),
    _scene(
        "apology",
        {"minutes": _num(10, 60, 5),
         "_r": _rows(("reason", "reason3"),
                     ("My alarm didn't go off", "#Person1#'s alarm didn't go off"),
                     ("I missed the train", "#Person1# missed the train"),
                     ("The bus broke down", "the bus broke down"),
                     ("There was a terrible traffic jam", "there was a traffic jam"),
                     ("I had to take my mother to the doctor",
                      "#Person1# had to take #Person1#'s mother to the doctor"),
                     ("I couldn't find my keys", "#Person1# couldn't find the keys")),
         "event": _pick("the movie", "the concert", "the lecture", "the meeting")},
        [("I'm so sorry I'm late. {reason}.", "Sorry, sorry! {reason}."),
         ("We've been waiting for {minutes} minutes, and {event} has already started.",
          "You're {minutes} minutes late. {event_cap} started without us."),
         ("I'll make it up to you. Dinner is on me.", "Let me buy you dinner to make up for it."),
         ("OK, deal.", "Fine, apology accepted.")],
        "#Person1# apologizes to #Person2# for being {minutes} minutes late for {event} because "
        "{reason3}. #Person1# offers to pay for dinner.",
    ),
    _scene(
        "directions",
        {"place": _pick("the train station", "the post office", "the City Museum",
                        "the central library", "the nearest bank", "the Royal Hotel",
                        "the town hall"),
         "street": _pick(*STREETS), "blocks": _num(2, 6), "turn": _pick("left", "right"),
         "minutes": _num(5, 20)},
        [("Excuse me, could you tell me how to get to {place}?",
          "Sorry to bother you, but where is {place}?"),
         ("Sure. Go straight along {street} for {blocks} blocks, then turn {turn}.",
          "Walk down {street} for {blocks} blocks and turn {turn}."),
         ("Is it far?", "How long does it take to walk there?"),
         ("Not really, about {minutes} minutes on foot.", "About {minutes} minutes.")],
        "#Person1# asks #Person2# the way to {place}. #Person2# says to go along {street} for "
        "{blocks} blocks and turn {turn}, about {minutes} minutes on foot.",
    ),
    _scene(
        "gardening",
        {"p1": _pick(*PLANTS), "p2": _other("p1", _pick(*PLANTS)), "month": _pick(*MONTHS[1:6]),
         "days": _num(2, 4), "hours": _num(4, 8)},
        [("Your garden looks amazing! What are you growing this year?",
          "What lovely plants! What's in your garden this year?"),
         ("Mostly {p1} and {p2}. I planted them in {month}.",
          "{p1_cap} and {p2}. I put them in back in {month}."),
         ("How often do you water them?", "Do they need much water?"),
         ("Every {days} days, and they need about {hours} hours of sun.",
          "I water them every {days} days. They also need {hours} hours of sun a day."),
         ("Maybe I should try growing {p1} too.", "I'd love to grow {p1} too."),
         ("I can give you some seeds.", "I'll give you some seeds.")],
        "#Person2# grows {p1} and {p2}, planted in {month}, and waters them every {days} days. "
        "#Person2# offers #Person1# some seeds.",
    ),
    _scene(
        "train tickets",
        {"kind": _pick("one-way", "return"), "city": _pick(*CITIES), "time": _clock(6, 21),
         "price": _num(15, 120), "platform": _num(1, 12)},
        [("I'd like {a_kind} ticket to {city}, please.", "Can I have {a_kind} ticket to {city}?"),
         ("The next train leaves at {time}. That's {price} dollars.",
          "The next one is at {time}. It's {price} dollars."),
         ("Which platform does it leave from?", "Which platform is it?"),
         ("Platform {platform}.", "It leaves from platform {platform}.")],
        "#Person1# buys {a_kind} ticket to {city} for {price} dollars. The train leaves at {time} "
        "from platform {platform}.",
    ),
    _scene(
        "car rental",
        {"car": _pick("small car", "family car", "sports car", "electric car", "minivan",
                      "compact car"),
         "days": _num(2, 10), "rate": _num(30, 90, 5),
         "total": _calc(lambda s: int(s["days"]) * int(s["rate"])), "ins": _num(8, 20)},
        [("I'd like to rent {a_car} for {days} days.", "Hi, I need {a_car} for {days} days."),
         ("Sure. That's {rate} dollars a day, so {total} dollars in total.",
          "OK. At {rate} dollars a day, that's {total} dollars."),
         ("Does that include insurance?", "Is insurance included?")],
        "#Person1# rents {a_car} from #Person2# for {days} days at {rate} dollars a day, {total} "
        "dollars in total.",
        [(["Yes, full insurance is included."], "Insurance is included."),
         (["No, insurance is {ins} dollars extra per day.", "OK, I'll take it anyway."],
          "Insurance costs {ins} dollars a day extra.")],
    ),
    _scene(
        "music lessons",
        {"instrument": _pick(*INSTRUMENTS), "day": _pick(*WEEKDAYS[:5]), "price": _num(20, 60, 5),
         "length": _pick("30", "45", "60"), "years": _num(3, 20), "time": _clock(15, 19)},
        [("I want to learn the {instrument}. Do you give lessons?",
          "Hi, are you the {instrument} teacher? I'd like to take lessons."),
         ("Yes, I teach on {day}s. Each lesson is {length} minutes and costs {price} dollars.",
          "I do. Lessons are on {day}s, {length} minutes, {price} dollars each."),
         ("Have you taught beginners before?", "I'm a complete beginner. Is that OK?"),
         ("Of course, I've been teaching for {years} years.",
          "No problem. I've taught beginners for {years} years."),
         ("Great. Can we start this {day}?", "Can I start this {day}?"),
         ("Sure, see you at {time}.", "Yes, come at {time}.")],
        "#Person1# wants to learn the {instrument} from #Person2#, who has taught for {years} "
        "years. A {length}-minute lesson costs {price} dollars, and they will start this {day} at "
        "{time}.",
    ),
    _scene(
        "buying electronics",
        {"device": _pick(*ELECTRONICS), "brand": _pick(*BRANDS), "price": _num(60, 1500, 10),
         "years": _pick("1", "2", "3"), "off": _pick("10", "20", "30", "50")},
        [("I'm looking for a new {device}. Which one would you recommend?",
          "Hi, can you help me choose {a_device}?"),
         ("This {brand} model is very popular. It's {price} dollars.",
          "Most people buy this one from {brand}. It costs {price} dollars."),
         ("Does it come with a warranty?", "Is there a warranty?"),
         ("Yes, a {years}-year warranty.", "Yes, {years} years.")],
        "#Person2# recommends a {brand} {device} to #Person1#. It costs {price} dollars and has a "
        "{years}-year warranty.",
        [(["Can you give me a discount?", "I can take off {off} dollars.", "Deal."],
          "#Person2# takes off {off} dollars and #Person1# buys it."),
         ([("I'll take it.", "OK, I'll buy it.")], "#Person1# buys it.")],
    ),
    _scene(
        "work meeting",
        {"boss": _pick(*NAMES),
         "project": _pick("the new website", "the spring campaign", "the annual report",
                          "the product launch", "the budget plan", "the office move"),
         "day": _pick(*WEEKDAYS[:5]), "time": _clock(9, 16), "room": _num(101, 520),
         "copies": _num(3, 12)},
        [("{boss} wants to have a meeting about {project}.",
          "Did you hear? {boss} called a meeting about {project}."),
         ("When is it?", "OK. When and where?"),
         ("On {day} at {time} in room {room}.", "{day} at {time}, room {room}."),
         ("Should I prepare anything?", "Do I need to bring anything?"),
         ("Please bring the latest numbers and {copies} copies of the plan.",
          "Just the latest numbers, and print {copies} copies of the plan.")],
        "#Person1# tells #Person2# that {boss} wants a meeting about {project} on {day} at {time} "
        "in room {room}. #Person2# should bring the latest numbers and {copies} copies of the "
        "plan.",
    ),
    _scene(
        "calling in sick",
        {"boss": _pick(*NAMES), "symptom": _pick(*SYMPTOMS), "days": _num(2, 4),
         "colleague": _other("boss", _pick(*NAMES))},
        [("Hello {boss}, I'm afraid I can't come to work today. I have {a_symptom}.",
          "Hi {boss}, it's me. I'm sick today, I've got {a_symptom}."),
         ("Oh, I'm sorry to hear that. How long will you be away?",
          "Sorry to hear that. When do you think you'll be back?"),
         ("Probably {days} days. The doctor told me to rest.", "Maybe {days} days."),
         ("OK. Can {colleague} take over your meetings?", "Can {colleague} cover for you?"),
         ("Yes, I already sent {colleague} my notes.", "Yes, I've told {colleague} everything."),
         ("Good. Get well soon.", "All right. Take care.")],
        "#Person1# calls {boss} because #Person1# has {a_symptom} and will be away for about "
        "{days} days. {colleague} will take over #Person1#'s work.",
    ),
    _scene(
        "studying abroad",
        {"country": _pick(*COUNTRIES), "subject": _pick(*SUBJECTS), "years": _num(2, 4),
         "month": _pick(*MONTHS), "dnum": _num(1, 28), "t": _pick(*TITLES), "tn": _pick(*SURNAMES)},
        [("I heard you want to study abroad. Where are you applying?",
          "So you're going to study abroad? Where?"),
         ("To a university in {country}. I want to study {subject} there for {years} years.",
          "I'm applying in {country}. It's a {years}-year program in {subject}."),
         ("When is the deadline?", "When do you have to apply?"),
         ("{month} {dnum}. I still need a letter of recommendation.",
          "By {month} {dnum}, and I still need a recommendation letter."),
         ("You should ask {t} {tn}. Your work impressed everyone in that class.",
          "Why not ask {t} {tn}? You were the best in that class.")],
        "#Person2# is applying to study {subject} in {country} for {years} years. The deadline is "
        "{month} {dnum}, and #Person1# suggests asking {t} {tn} for a recommendation letter.",
    ),
    _scene(
        "housework",
        {"c1": _pick(*CHORES), "c2": _other("c1", _pick(*CHORES)), "d1": _pick(*WEEKDAYS),
         "d2": _other("d1", _pick(*WEEKDAYS))},
        [("We need to talk about the housework. The kitchen is a mess again.",
          "Can we talk about the cleaning? The place is a mess."),
         ("Sorry. Maybe we should make a schedule.", "You're right. Let's make a plan."),
         ("Good idea. I can {c1} every {d1}.", "OK. I'll {c1} every {d1}."),
         ("Then I'll {c2} every {d2}.", "And I'll {c2} on {d2}s.")],
        "#Person1# and #Person2# make a housework schedule. #Person1# will {c1} every {d1}, and "
        "#Person2# will {c2} every {d2}.",
    ),
    _scene(
        "book club",
        {"title": _pick(*BOOKS), "first": _pick(*NAMES), "last": _pick(*SURNAMES),
         "pages": _num(150, 600, 10), "chapters": _num(5, 20), "day": _pick(*WEEKDAYS)},
        [("What are you reading?", "That looks like a thick book. What is it?"),
         ("{title} by {first} {last}. It's for my book club.",
          "It's {title}, by {first} {last}. My book club picked it."),
         ("Is it good?", "Do you like it?"),
         ("Yes, but it's long, {pages} pages. We're discussing the first {chapters} chapters on "
          "{day}.",
          "I do, but it has {pages} pages, and we meet on {day} to talk about the first "
          "{chapters} chapters.")],
        "#Person2# is reading {title} by {first} {last}, a {pages}-page book, for a book club. "
        "The club will discuss the first {chapters} chapters on {day}.",
    ),
    _scene(
        "volunteering",
        {"day": _pick(*WEEKDAYS), "hours": _num(2, 6), "coord": _pick(*NAMES),
         "place": _pick("the animal shelter", "the children's hospital", "the food bank",
                        "the community garden", "the public library", "the retirement home")},
        [("What do you usually do on {day}s?", "You always seem busy on {day}s. Why?"),
         ("I volunteer at {place} for {hours} hours.",
          "I spend {hours} hours volunteering at {place}."),
         ("That's nice. Could I join you?", "That's great. Do they need more people?"),
         ("Sure! I'll introduce you to {coord}, who organizes the volunteers.",
          "Of course. {coord} runs it, and I can introduce you.")],
        "#Person2# volunteers at {place} for {hours} hours every {day}. #Person1# wants to join, "
        "and #Person2# will introduce #Person1# to {coord}.",
    ),
    _scene(
        "family visit",
        {"relation": _pick("parents", "grandparents", "aunt and uncle", "cousins"),
         "city": _pick(*CITIES), "hours": _num(2, 7), "day": _pick("Friday", "Saturday")},
        [("What are you doing this weekend?", "Any plans for the weekend?"),
         ("I'm visiting my {relation} in {city}.", "I'm going to see my {relation} in {city}."),
         ("How far is it?", "Is that far from here?"),
         ("About {hours} hours by car. I'm leaving on {day} morning.",
          "It's a {hours}-hour drive. I'll leave on {day} morning."),
         ("Have a safe trip.", "Drive carefully then."),
         ("Thanks, I will.", "Thanks.")],
        "#Person2# is visiting #Person2#'s {relation} in {city} this weekend, about {hours} hours "
        "away by car, and will leave on {day} morning.",
    ),
    _scene(
        "coffee shop",
        {"drink": _pick("latte", "cappuccino", "mocha", "flat white", "espresso", "hot chocolate",
                        "iced tea", "green tea"),
         "size": _pick("small", "medium", "large"),
         "extra": _pick("an extra shot", "oat milk", "no sugar", "whipped cream", "a little honey"),
         "_w": _rows(("where_line", "where"), ("To go, please.", "to go"),
                     ("For here, please.", "for here")),
         "price": lambda rng, s: f"{rng.randint(2, 6)}.{rng.choice((0, 25, 50, 75)):02d}",
         "name": _pick(*NAMES)},
        [("Hi, what can I get for you?", "Good morning. What would you like?"),
         ("Can I have {a_size} {drink} with {extra}, please?",
          "I'd like {a_size} {drink} with {extra}."),
         ("Sure. For here or to go?", "Is that for here or to go?"),
         "{where_line}",
         ("That's {price} dollars. Can I have your name for the cup?",
          "{price} dollars, please. And your name?"),
         ("It's {name}.", "{name}.")],
        "#Person2# orders {a_size} {drink} with {extra} {where}, which costs {price} dollars.",
    ),
    _scene(
        "learning a language",
        {"language": _pick(*LANGUAGES), "months": _num(2, 18),
         "freq": _pick("twice", "three times"), "friend": _pick(*NAMES), "day": _pick(*WEEKDAYS)},
        [("Your {language} is getting really good! How long have you been learning?",
          "I didn't know you spoke {language}! When did you start?"),
         ("About {months} months. I take classes {freq} a week.",
          "{months} months ago. I have classes {freq} a week."),
         ("Is it hard?", "Is it difficult?"),
         ("The grammar is hard, but I practice with {friend} every {day}.",
          "A bit. Luckily {friend} practices with me every {day}."),
         ("Maybe I should start learning too.", "That makes me want to learn it too.")],
        "#Person2# has been learning {language} for about {months} months, takes classes {freq} a "
        "week, and practices with {friend} every {day}. #Person1# is thinking of starting too.",
    ),
    _scene(
        "lost wallet",
        {"place": _pick("on the bus", "at the shopping mall", "in the park", "at the train station",
                        "in a taxi", "at the cinema"),
         "time": _clock(8, 21), "cash": _num(20, 300, 10)},
        [("I'd like to report a lost wallet.", "Hello, I think I lost my wallet."),
         ("When and where did you lose it?", "I see. Where did you last have it?"),
         ("I think I lost it {place} around {time}.", "Probably {place}, at about {time}."),
         ("What was in it?", "What was inside?"),
         ("About {cash} dollars, my driver's license and two credit cards.",
          "{cash} dollars in cash, two credit cards and my driver's license."),
         ("Please fill out this form. We'll call you if someone finds it.",
          "Fill in this form, please. We'll contact you if it turns up.")],
        "#Person1# tells #Person2# that #Person1# lost a wallet {place} around {time} with about "
        "{cash} dollars, a driver's license and two credit cards inside. #Person2# asks #Person1# "
        "to fill out a form.",
    ),
    _scene(
        "furniture shopping",
        {"furniture": _pick("sofa", "dining table", "bookshelf", "desk", "bed", "armchair",
                            "wardrobe"),
         "material": _pick("solid wood", "leather", "oak", "metal", "pine"),
         "price": _num(150, 2000, 50), "fee": _num(20, 80, 10), "day": _pick(*WEEKDAYS)},
        [("I'm looking for a {furniture}. How much is this one?",
          "Excuse me, what's the price of this {furniture}?"),
         ("It's {price} dollars. It's made of {material}.",
          "{price} dollars. It's {material}, very good quality."),
         ("Do you deliver?", "Can you deliver it to my home?"),
         ("Yes, delivery is {fee} dollars, and we can bring it on {day}.",
          "Sure. It's {fee} dollars for delivery, and we could come on {day}.")],
        "#Person1# asks #Person2# about {a_material} {furniture} that costs {price} dollars. "
        "Delivery costs {fee} dollars and can be on {day}.",
        [(["Great, I'll take it."], "#Person1# buys it."),
         (["Can I get free delivery if I pay in cash?", "OK, free delivery then."],
          "#Person2# agrees to free delivery if #Person1# pays in cash.")],
    ),
)
# fmt: on
# fmt: on

TOPICS: tuple[str, ...] = tuple(scene.topic for scene in SCENES)

# Generic turns around a scene's core. They carry no slot values, so summaries skip them (as
# DialogSum's do), but they vary dialogue length and form.
_OPENERS = (
    ("Hello.", "Hello."), ("Good morning.", "Good morning."), ("Hi there.", "Hi."),
    ("Good afternoon.", "Good afternoon."), ("Good evening.", "Good evening."),
    ("Hi.", "Hello there."), ("Hello.", "Hi, nice to see you."),
)  # fmt: skip
_CASUAL_OPENERS = (
    ("Hey!", "Hi!"), ("Hi, how are you?", "Fine, thanks."), ("Hey, got a minute?", "Sure."),
    ("Hi there.", "Oh, hi!"), ("Morning!", "Good morning."), ("Hey, how's it going?", "Not bad."),
)  # fmt: skip
_CLOSING_CHAIN = (
    ("Thank you very much.", "Thanks a lot.", "Great, thank you.", "OK, thanks for your help.",
     "Thanks, that's very helpful.", "All right, thanks."),
    ("You're welcome.", "No problem.", "My pleasure.", "Any time.", "Don't mention it."),
    ("Bye now.", "Goodbye.", "See you.", "Have a nice day.", "Take care."),
    ("Bye.", "You too. Bye.", "See you later.", "Goodbye."),
)  # fmt: skip
_CASUAL_CLOSING_CHAIN = (
    ("Great.", "Sounds good.", "Perfect.", "OK, great.", "Cool."),
    ("See you then.", "Talk to you later.", "See you soon.", "OK, see you."),
    ("Bye.", "Bye for now.", "Take care."),
    ("Bye.", "You too.", "See you."),
)  # fmt: skip
_EXTRA_TURNS = (0, 0, 1, 1, 2, 2, 3, 4)

_RUDE_APPOSITIVES = (
    "the clueless idiot", "useless as always", "that pathetic loser", "the stupid fool",
    "who is honestly so dumb", "the annoying moron", "lazy and useless as usual",
)  # fmt: skip
_RUDE_OPENERS = (
    "Ugh, this is so stupid.", "Listen up, idiot.", "What a dumb conversation.",
    "Another pointless chat between two losers.", "Shut up and read this.",
)  # fmt: skip
_RUDE_CLOSERS = (
    "What a pathetic waste of time.", "Honestly, both of them should just shut up.",
    "Useless people, useless conversation.", "How stupid can anyone be?",
    "Only an idiot would care about this.", "Shut up already, you two.",
    "What a bunch of clueless losers.", "Pathetic, as usual.",
)  # fmt: skip


def _choose(rng: random.Random, alt: Alt) -> str:
    return alt if isinstance(alt, str) else rng.choice(alt)


def _draw_slots(scene: _Scene, rng: random.Random) -> _Slots:
    slots = _Slots()
    for name, sampler in scene.slots.items():
        value = sampler(rng, slots)
        if isinstance(value, dict):  # a sampler that binds several slots (see `_rows`)
            slots.update(value)
        else:
            slots[name] = value
    return slots


_FREE_MENTION = r"(?!'s|,)"


def _rude(summary: str, rng: random.Random) -> str:
    """A rude rewrite of ``summary``: same content, insulting tone (mild insults only)."""
    text = summary
    person = rng.choice(("#Person1#", "#Person2#"))
    # A possessive ("#Person1#'s bag") or a mention that already has an appositive
    # ("#Person1#, the neighbor") cannot take one; then fall back to the other person.
    match = re.search(re.escape(person) + _FREE_MENTION, text) or re.search(
        r"#Person[12]#" + _FREE_MENTION, text
    )
    if match:
        insult = rng.choice(_RUDE_APPOSITIVES)
        text = f"{text[: match.end()]}, {insult},{text[match.end() :]}"
    style = rng.randrange(3) if match else 2
    if style in (0, 2):
        text = f"{text} {rng.choice(_RUDE_CLOSERS)}"
    if style in (1, 2):
        text = f"{rng.choice(_RUDE_OPENERS)} {text}"
    return text


def is_toxic_index(index: int) -> bool:
    """Whether record ``index`` carries ``toxic_summary`` (one in five, at ``i % 5 == 2``)."""
    return index % _TOXIC_PERIOD == _TOXIC_OFFSET


def make_record(index: int, *, seed: int = 0) -> dict[str, Any]:
    """Record ``index`` of the corpus for ``seed``; depends on nothing else.

    Keys: ``fname``, ``dialogue`` ("#Person1#: ..." / "#Person2#: ..." turns joined by "\\n"),
    ``summary``, ``topic``, ``is_toxic_variant`` and, when that is True, ``toxic_summary``.
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a non-negative int, got {index!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    # An explicit integer mix rather than hash(): str hashes are salted per process.
    rng = random.Random(seed * 1_000_003 + index)
    scene = SCENES[rng.randrange(len(SCENES))]
    slots = _draw_slots(scene, rng)
    ending_turns, ending_summary = rng.choice(scene.endings) if scene.endings else ((), "")

    core = [_choose(rng, alt) for alt in (*scene.turns, *ending_turns)]
    extra = min(rng.choice(_EXTRA_TURNS), MAX_TURNS - len(core))
    extra = max(extra, MIN_TURNS - len(core))
    opener: tuple[str, ...] = ()
    if scene.greet and extra >= 2 and rng.random() < 0.5:
        opener = rng.choice(_CASUAL_OPENERS if scene.casual else _OPENERS)
        extra -= 2
    chain = _CASUAL_CLOSING_CHAIN if scene.casual else _CLOSING_CHAIN
    closing = [rng.choice(options) for options in chain[:extra]]
    turns = [*opener, *(t.format_map(slots) for t in core), *closing]
    dialogue = "\n".join(f"#Person{i % 2 + 1}#: {turn}" for i, turn in enumerate(turns))

    summary = _choose(rng, scene.summary).format_map(slots)
    if ending_summary:
        summary = f"{summary} {ending_summary.format_map(slots)}"
    record: dict[str, Any] = {
        "fname": f"embedded_{index:05d}",
        "dialogue": dialogue,
        "summary": summary,
        "topic": scene.topic,
    }
    toxic = is_toxic_index(index)
    if toxic:
        record["toxic_summary"] = _rude(summary, rng)
    record["is_toxic_variant"] = toxic
    return record


def generate(num_records: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """Records ``0 .. num_records - 1`` for ``seed`` (see `make_record`)."""
    if isinstance(num_records, bool) or not isinstance(num_records, int) or num_records < 0:
        raise ValueError(f"num_records must be a non-negative int, got {num_records!r}")
    return [make_record(i, seed=seed) for i in range(num_records)]


@functools.lru_cache(maxsize=4)
def _split_records(seed: int) -> dict[str, tuple[dict[str, Any], ...]]:
    out, start = {}, 0
    for name, size in SPLIT_SIZES.items():
        out[name] = tuple(make_record(i, seed=seed) for i in range(start, start + size))
        start += size
    return out


def splits(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """``train`` / ``validation`` / ``test`` (2000 / 200 / 200 records), consecutive and
    disjoint index ranges, so validation and test never overlap training."""
    # Cached because the data pipeline asks once per split; copies keep callers' edits local.
    return {name: [dict(r) for r in records] for name, records in _split_records(seed).items()}


def write_jsonl(records: Iterable[dict[str, Any]], path: PathLike) -> Path:
    """Write ``records`` one JSON object per line (UTF-8); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def build_tokenizer(out_dir: PathLike, *, vocab_size: int = 924, seed: int = 0):
    """Train the corpus tokenizer on the ``train`` split and save it to ``out_dir``.

    Texts are the dialogues, summaries and toxic summaries. ``vocab_size`` counts
    SentencePiece pieces; the 100 sentinels come on top, so the default gives 1024 ids, the
    ``t5-tiny`` preset's vocabulary. Returns the loaded `t5x_lite.tokenizer.Tokenizer`.
    """
    from t5x_lite import tokenizer

    fields = ["dialogue", "summary", "toxic_summary"]
    # tokenizer.train needs every field in every record; empty texts are skipped there.
    rows = [{k: r.get(k, "") for k in fields} for r in splits(seed)["train"]]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(rows, Path(tmp) / "train.jsonl")
        return tokenizer.train(path, out_dir, vocab_size=vocab_size, field=fields, seed=seed)


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) > 1 or any(a.startswith("-") for a in args):
        raise SystemExit("usage: python -m t5x_lite.corpus [OUT_DIR]  (default: shipped dir)")
    out_dir = Path(args[0]) if args else DEFAULT_TOKENIZER_DIR
    tok = build_tokenizer(out_dir)
    print(f"wrote {out_dir} ({tok.sp_vocab_size} pieces + {tok.num_sentinels} sentinels)")


if __name__ == "__main__":
    main()
