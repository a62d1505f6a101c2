"""The template vocabulary of the synthetic memory-dialogue generator (:mod:`training.data.synthetic`).

A :class:`FactType` is one kind of personal fact ("my cat is called X"): phrasings to state it, to ask about it and
to answer, acknowledgements, the follow-up "detail" turns that build on it (the cumulative style), the ``kind`` of
value it holds (:mod:`training.data.synthetic_values`: values are generated per episode, never listed here) and
its ``group``: distractor facts of an episode come from the same group (a dog's name beside the cat's), so the
model has to bind each value to its key instead of copying the last name it saw.

Templates use ``{v}`` (the value). Filler turns (general knowledge, small talk) never mention a fact value; every
word of a template or a filler is reserved (`synthetic_values.RESERVED_WORDS`), so no generated value equals one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from training.data.synthetic_values import RESERVED_WORDS


@dataclass(frozen=True)
class FactType:
    """One kind of fact. ``subject`` names it in the first person ("my cat's name"): the benchmark's hand-written
    "unseen phrasing" questions are built from it, never the generator."""

    key: str
    group: str
    kind: str
    subject: str
    statements: tuple[str, ...]
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    acks: tuple[str, ...]
    details: tuple[tuple[str, str], ...]


_NAME_ACKS = ("{v}, got it.", "Noted: {v}.", "{v}. I'll remember that.", "Thanks, {v} it is.")
_CODE_ACKS = ("Saved: {v}.", "{v}, noted.", "Got it: {v}.", "I'll keep {v} in mind.")
_GENERIC_ACKS = (
    "Got it, thanks for telling me.",
    "Noted! I'll keep that in mind.",
    "Thanks, I'll remember that.",
    "Good to know!",
)

_PET_DETAILS = (
    ("{v} knocked a glass off the table this morning.", "Oh no, {v} sounds like a handful!"),
    ("I bought {v} a new bed yesterday.", "Lucky {v}! I hope {v} likes the new bed."),
    ("{v} has been sleeping all day.", "{v} must be tired; a lazy day is good for a pet."),
    ("Should I take {v} to the vet for a check-up?", "A yearly check-up is a good idea for {v}."),
    ("{v} turned five last week.", "Happy birthday to {v}!"),
    ("What toy should I get for {v}?", "A puzzle toy would keep {v} busy for hours."),
)
_PERSON_DETAILS = (
    ("{v} is visiting me next weekend.", "That's lovely, I hope you and {v} have a great time."),
    ("{v} just got a new job.", "Congratulations to {v}!"),
    ("What should I get {v} for their birthday?", "Maybe a good book; {v} might enjoy that."),
    ("{v} and I went hiking yesterday.", "Sounds like a fun day out with {v}."),
    ("I haven't talked to {v} in a while.", "Maybe give {v} a call this week."),
)
_PLACE_DETAILS = (
    ("The weather in {v} has been lovely this week.", "Nice weather in {v} makes everything better."),
    ("What should I see in {v}?", "Walk around the old town of {v} and try the local food."),
    ("I found a great cafe in {v}.", "A good cafe in {v} is a real find."),
    ("Rents in {v} keep going up.", "Housing costs are a worry in {v}, as in many places."),
)
_THING_DETAILS = (
    ("I was thinking about {v} again today.", "It sounds like {v} matters to you."),
    ("I told my friend about {v} yesterday.", "I'm sure your friend found {v} interesting."),
    ("Do you think {v} was a good choice?", "{v} sounds like a good choice to me."),
    ("Remind me to tell you more about {v} later.", "Sure, I'd like to hear more about {v}."),
)
_CODE_DETAILS = (
    ("I wrote {v} on a sticky note, just in case.", "Good idea to keep {v} written down somewhere safe."),
    ("Should I share {v} with my family?", "Share {v} only with people you trust."),
    ("I keep mixing up {v} with an old one.", "Repeating {v} a few times may help it stick."),
)


def _s(text: str) -> tuple[str, ...]:
    return tuple(text.split("|"))


def _build_fact_types() -> tuple[FactType, ...]:
    types: list[FactType] = []
    for animal in ("cat", "dog", "parrot", "rabbit", "hamster", "tortoise", "horse", "goldfish"):
        types.append(FactType(
            key=f"{animal}_name", group="pet", kind="name", subject=f"my {animal}'s name",
            statements=(f"My {animal} is called {{v}}.", f"I have a {animal} named {{v}}.",
                        f"Our {animal}'s name is {{v}}.", f"We just adopted a {animal} and called it {{v}}."),
            questions=(f"What is my {animal} called?", f"Do you remember my {animal}'s name?",
                       f"What's the name of my {animal}?"),
            answers=(f"Your {animal} is called {{v}}.", f"Your {animal}'s name is {{v}}.", "{v}."),
            acks=(*_NAME_ACKS, f"{{v}} is a lovely name for a {animal}!", f"Hello to {{v}} the {animal}!"),
            details=_PET_DETAILS,
        ))
    for relation in ("sister", "brother", "best friend", "boss", "neighbour", "cousin", "grandmother",
                     "flatmate", "dentist", "piano teacher"):
        types.append(FactType(
            key=f"{relation.replace(' ', '_')}_name", group="person", kind="full_name",
            subject=f"my {relation}'s name",
            statements=(f"My {relation} is called {{v}}.", f"My {relation}'s name is {{v}}.",
                        f"I should tell you that my {relation} is named {{v}}."),
            questions=(f"What is my {relation}'s name?", f"What is my {relation} called?",
                       f"Do you remember the name of my {relation}?"),
            answers=(f"Your {relation} is called {{v}}.", f"Your {relation}'s name is {{v}}.", "{v}."),
            acks=(*_NAME_ACKS, f"Thanks for telling me about your {relation}, {{v}}."),
            details=_PERSON_DETAILS,
        ))
    places = (
        ("home_town", "the town I live in", "I live in {v}.|I moved to {v} a few years ago.|My home is in {v}.",
         "Where do I live?|Which town do I live in?|Do you remember where my home is?",
         "You live in {v}.|Your home is in {v}."),
        ("birth_town", "the town I was born in", "I was born in {v}.|I grew up in {v}; that's where I was born.",
         "Where was I born?|Which town was I born in?", "You were born in {v}.|Your birthplace is {v}."),
        ("dream_trip", "the place I dream of visiting", "I've always wanted to visit {v}.|My dream trip is to {v}.",
         "Which place do I dream of visiting?|Where is my dream trip?",
         "You've always wanted to visit {v}.|Your dream trip is to {v}."),
        ("last_holiday", "where I went on my last holiday",
         "Last summer I went on holiday to {v}.|I spent my last holiday in {v}.",
         "Where did I go on my last holiday?|Which place did I visit last summer?",
         "You went on holiday to {v}.|Your last holiday was in {v}."),
        ("office_town", "the town my office is in", "My office is in {v}.|I commute to {v} for work.",
         "Where is my office?|Which town do I work in?", "Your office is in {v}.|You work in {v}."),
    )
    for key, subject, statements, questions, answers in places:
        types.append(FactType(key=key, group="place", kind="place", subject=subject, statements=_s(statements),
                              questions=_s(questions), answers=(*_s(answers), "{v}."),
                              acks=(*_NAME_ACKS, "{v} sounds like a wonderful place."), details=_PLACE_DETAILS))
    things = (
        ("band_name", "the name of my band", "My band is called {v}.|I play in a band named {v}.",
         "What is my band called?|What's the name of my band?", "Your band is called {v}."),
        ("boat_name", "the name of my boat", "My boat is called {v}.|I named my boat {v}.",
         "What is my boat called?|What did I name my boat?", "Your boat is called {v}."),
        ("project_name", "the codename of my project", "My project at work is codenamed {v}.|"
         "The codename of my project is {v}.", "What is my project's codename?|What is my project called?",
         "Your project is codenamed {v}."),
        ("company_name", "the company I work for", "I work for a company called {v}.|My employer is {v}.",
         "Which company do I work for?|Who is my employer?", "You work for {v}.|Your employer is {v}."),
        ("book_title", "the book I am reading", "I'm reading a book called {v}.|The book on my nightstand is {v}.",
         "Which book am I reading?|What is the book I'm reading called?", "You're reading {v}."),
        ("cafe_name", "my favourite cafe", "My favourite cafe is called {v}.|I always get coffee at {v}.",
         "What is my favourite cafe?|Where do I always get coffee?", "Your favourite cafe is {v}."),
    )
    for key, subject, statements, questions, answers in things:
        types.append(FactType(key=key, group="title", kind="full_name", subject=subject,
                              statements=_s(statements), questions=_s(questions), answers=(*_s(answers), "{v}."),
                              acks=_NAME_ACKS, details=_THING_DETAILS))
    codes = (
        ("flight_number", "my flight number", "My flight number is {v}.|I'm flying tomorrow on flight {v}.",
         "What is my flight number?|Which flight am I on?", "Your flight number is {v}.|You are on flight {v}."),
        ("booking_reference", "my booking reference", "My booking reference is {v}.|The hotel gave me the "
         "booking reference {v}.", "What is my booking reference?|Can you remind me of my booking reference?",
         "Your booking reference is {v}."),
        ("licence_plate", "my licence plate", "My licence plate is {v}.|My car's number plate reads {v}.",
         "What is my licence plate?|What does my number plate say?", "Your licence plate is {v}."),
        ("parcel_code", "my parcel tracking code", "The tracking code of my parcel is {v}.|My parcel's code is {v}.",
         "What is my parcel's tracking code?|Which tracking code did I give you?", "Your parcel's code is {v}."),
    )
    numbers = (
        ("door_code", "the door code", "The door code is {v}.|To get in, the code for the door is {v}.",
         "What is the door code?|Can you remind me of the door code?", "The door code is {v}."),
        ("room_number", "my room number", "I'm staying in room {v}.|My hotel room number is {v}.",
         "What is my room number?|Which room am I staying in?", "You are in room {v}.|Your room number is {v}."),
        ("phone_extension", "my phone extension", "My phone extension at work is {v}.|You can reach me on "
         "extension {v}.", "What is my phone extension?|Which extension can people reach me on?",
         "Your extension is {v}."),
        ("locker_number", "my locker number", "My gym locker is number {v}.|I use locker {v} at the gym.",
         "What is my locker number?|Which locker do I use at the gym?", "Your locker is number {v}."),
    )
    phrases = (
        ("wifi_password", "the wifi password", "The password for our wifi is {v}.|Our wifi password is {v}.",
         "What is our wifi password?|Can you remind me of the wifi password?", "The wifi password is {v}."),
        ("username", "my username", "My username on the forum is {v}.|I log in with the username {v}.",
         "What is my username?|Which username do I log in with?", "Your username is {v}."),
        ("club_password", "the club's secret word", "The secret word for the club is {v}.|To enter the club you "
         "say {v}.", "What is the club's secret word?|What do I say to enter the club?",
         "The secret word is {v}."),
        ("recovery_phrase", "my recovery phrase", "My account recovery phrase is {v}.|I set {v} as my recovery "
         "phrase.", "What is my recovery phrase?|Which recovery phrase did I set?", "Your recovery phrase is {v}."),
    )
    for group, kind, rows in (("code", "code", codes), ("number", "number", numbers),
                              ("passphrase", "passphrase", phrases)):
        for key, subject, statements, questions, answers in rows:
            types.append(FactType(key=key, group=group, kind=kind, subject=subject, statements=_s(statements),
                                  questions=_s(questions), answers=(*_s(answers), "{v}."), acks=_CODE_ACKS,
                                  details=_CODE_DETAILS))
    return tuple(types)


FACT_TYPES: tuple[FactType, ...] = _build_fact_types()
"""Every fact type, in a fixed order."""

GENERIC_ACKS: tuple[str, ...] = _GENERIC_ACKS
"""Acknowledgements that fit any statement (they do not repeat the value)."""

FILLER_QA: tuple[tuple[str, str], ...] = (
    ("How many days are there in a week?", "There are seven days in a week."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What do bees make?", "Bees make honey."),
    ("At what temperature does water boil at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("Which planet is closest to the Sun?", "Mercury is the closest planet to the Sun."),
    ("What is the largest ocean on Earth?", "The Pacific is the largest ocean on Earth."),
    ("How many minutes are in an hour?", "There are sixty minutes in an hour."),
    ("What gas do plants take in from the air?", "Plants take in carbon dioxide."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Which animal is called the king of the jungle?", "The lion is often called the king of the jungle."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("What is the tallest mountain in the world?", "Mount Everest is the tallest mountain above sea level."),
    ("What shape has four equal sides and four right angles?", "A square does."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths."),
    ("How many hours are there in a day?", "There are twenty-four hours in a day."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("Which organ pumps blood through the body?", "The heart pumps blood through the body."),
    ("How many strings does a standard guitar have?", "A standard guitar has six strings."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("How many bones does an adult human have?", "An adult human has 206 bones."),
    ("What do we call a word with the same meaning as another?", "That is called a synonym."),
    ("What is guacamole mainly made from?", "Guacamole is made mainly from avocado."),
    ("How many players does a football team have on the pitch?", "Each team has eleven players on the pitch."),
    ("Can you suggest a way to relax after work?", "A short walk or some quiet music can help you unwind."),
    ("Any tips for sleeping better?", "Keep a regular bedtime and avoid screens for an hour before sleep."),
    ("How can I stay focused while studying?", "Work in short blocks with breaks and keep your phone away."),
    ("What's a good way to start the morning?", "A glass of water, some stretching and a simple breakfast."),
    ("Do you have a tip for remembering names?", "Repeat the name when you hear it and picture it in your mind."),
    ("How do I keep houseplants alive?", "Give them the right light and water only when the soil is dry."),
    ("What should I pack for a weekend trip?", "Pack layers, a charger, toiletries and comfortable shoes."),
    ("How can I save a bit of money each month?", "Set up an automatic transfer to savings on payday."),
    ("Is it better to exercise in the morning or the evening?", "The best time is the one you can stick to."),
    ("What can I cook when I'm short on time?", "An omelette or a quick stir-fry takes about fifteen minutes."),
    ("Can you tell me a fun fact?", "Octopuses have three hearts."),
    ("How long should I boil an egg?", "About seven minutes gives a firm white and a slightly soft yolk."),
    ("Why is the sky blue?", "Air scatters blue sunlight more strongly than red sunlight."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("How many weeks are there in a year?", "There are fifty-two weeks in a year."),
)
"""Unrelated question/answer turns (long-range filler); none mentions a fact value."""


def _template_words() -> set[str]:
    texts = [q + " " + a for q, a in FILLER_QA] + list(GENERIC_ACKS)
    for fact in FACT_TYPES:
        texts += [fact.subject, *fact.statements, *fact.questions, *fact.answers, *fact.acks]
        texts += [x for pair in fact.details for x in pair]
    return {w for text in texts for w in re.findall(r"[\w-]+", text.replace("{v}", " ").lower())}


RESERVED_WORDS.update(_template_words())

__all__ = ["FACT_TYPES", "FILLER_QA", "GENERIC_ACKS", "FactType"]
