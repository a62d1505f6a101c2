"""The template vocabulary of the synthetic memory-dialogue generator (:mod:`training.data.synthetic`).

A :class:`FactType` is one kind of personal fact ("my cat is called X"): phrasings to state it, to ask about it and
to answer, its value vocabulary, and follow-up "detail" turns that build on it (the cumulative style). Every value
string is unique across all fact types (checked by the tests), so partitioning values per type also partitions them
globally. Filler turns (general knowledge, small talk) never mention a fact value.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FactType:
    """One kind of fact. Templates use ``{v}`` (the value) and ``{av}`` (the value with "a"/"an")."""

    key: str
    statements: tuple[str, ...]
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    acks: tuple[str, ...]
    details: tuple[tuple[str, str], ...]
    values: tuple[str, ...]


def _words(text: str) -> tuple[str, ...]:
    return tuple(w.replace("_", " ") for w in text.split())


_PERSON_NAMES = _words(
    "Alice Bruno Carmen Dmitri Elena Farid Greta Hamid Ingrid Jonas Keiko Lorenzo Maya Nikolai Olga Pedro "
    "Quentin Rosa Samir Tomas Viktor Wanda Xavier Yara Zoltan Amara Bastian Chiara Dario Esme Felix Gloria Hugo "
    "Isla Jasper Kira Leon Marta Nadia Oscar Paloma Rafael Tariq Una Vera Wesley Yusuf Zara Anika Benedikt Cyrus "
    "Delia Emil Fiona Gideon Helga Ivo Jolene Kasper Lidia Matteo Nora Orla Priya Ruben Selma Theo Ulla Vivian "
    "Willa Yannick Zelda Arjun Beatrix Clement Dagny Elif Fabian Henrik"
)
_PET_NAMES = _words(
    "Miso Biscuit Pickles Noodle Waffles Pepper Mochi Tofu Sprout Bean Clover Ziggy Muffin Pebble Nacho Button "
    "Marble Juniper Peanut Toffee Gizmo Rolo Basil Chutney Fudge Nugget Pippin Crumpet Wasabi Snickers Tango "
    "Socks Bramble Doodle Fizz Gumbo Jellybean Kipper Lentil Oreo Pretzel Sherbet Truffle Velvet Whiskers Yoyo "
    "Zorro Bubbles Custard Dusty Echo Flapjack Goober Hopscotch Inky Jinx Lollipop Marshmallow Noodlehead Paprika"
)
_CITIES = _words(
    "Lisbon Porto Madrid Valencia Seville Barcelona Marseille Lyon Bordeaux Geneva Zurich Vienna Prague Krakow "
    "Warsaw Budapest Bratislava Ljubljana Zagreb Belgrade Bucharest Athens Thessaloniki Istanbul Naples Florence "
    "Bologna Turin Munich Hamburg Cologne Leipzig Copenhagen Oslo Bergen Stockholm Helsinki Tallinn Riga Vilnius "
    "Dublin Galway Edinburgh Glasgow Cardiff Bristol Manchester Reykjavik Montreal Toronto Vancouver Seattle "
    "Denver Chicago Boston Austin Nairobi Accra Dakar Marrakesh Cairo Tunis Mumbai Delhi Kyoto Osaka Seoul "
    "Busan Hanoi Manila Jakarta Perth Adelaide Auckland Wellington Lima Quito Bogota Santiago Montevideo Havana"
)

_PET_DETAILS = (
    ("{v} knocked a glass off the table this morning.", "Oh no, {v} sounds like a handful!"),
    ("I bought {v} a new bed yesterday.", "Lucky {v}! I hope {v} likes the new bed."),
    ("{v} has been sleeping all day.", "{v} must be tired; a lazy day is good for a pet."),
    ("Should I take {v} to the vet for a check-up?", "A yearly check-up is a good idea for {v}."),
    ("{v} turned five last week.", "Happy birthday to {v}!"),
    ("What toy should I get for {v}?", "A puzzle toy would keep {v} busy for hours."),
    ("{v} made friends with the neighbours' pet.", "That's sweet, {v} has a new friend."),
    ("I think {v} is getting a bit heavy.", "Maybe {v} could use smaller portions and more play."),
)
_PERSON_DETAILS = (
    ("{v} is visiting me next weekend.", "That's lovely, I hope you and {v} have a great time."),
    ("{v} just got a new job.", "Congratulations to {v}!"),
    ("What should I get {v} for their birthday?", "Maybe a good book; {v} might enjoy that."),
    ("{v} and I went hiking yesterday.", "Sounds like a fun day out with {v}."),
    ("I haven't talked to {v} in a while.", "Maybe give {v} a call this week."),
    ("{v} is learning to bake sourdough.", "Sourdough takes patience; good luck to {v}."),
    ("{v} recommended a podcast to me.", "{v} seems to have good taste in podcasts."),
)
_PLACE_DETAILS = (
    ("The weather in {v} has been lovely this week.", "Nice weather in {v} makes everything better."),
    ("What should I see in {v}?", "Walk around the old town of {v} and try the local food."),
    ("I found a great café in {v}.", "A good café in {v} is a real find."),
    ("Public transport in {v} is getting better.", "Good transport makes getting around {v} easier."),
    ("Rents in {v} keep going up.", "Housing costs are a worry in {v}, as in many cities."),
    ("There's a music festival in {v} this summer.", "A summer festival in {v} sounds fun."),
)
_LIKE_DETAILS = (
    ("My friend does not like {v} at all.", "Tastes differ, but you clearly love {v}."),
    ("I saw something about {v} today that made me smile.", "It's nice when {v} turns up in your day."),
    ("Why do you think I like {v} so much?", "{v} has a lot going for it; it's easy to see why you like it."),
    ("I'd like to share {v} with more people.", "Sharing {v} with friends sounds like a nice idea."),
    ("Is it strange to like {v} this much?", "Not at all; lots of people feel strongly about {v}."),
)
_GENERIC_DETAILS = (
    ("I was thinking about {v} again today.", "It sounds like {v} matters to you."),
    ("I told my friend about {v} yesterday.", "I'm sure your friend found {v} interesting."),
    ("Do you think {v} was a good choice?", "{v} sounds like a good choice to me."),
    ("Remind me to tell you more about {v} later.", "Sure, I'd like to hear more about {v}."),
)
_GENERIC_ACKS = (
    "Got it, thanks for telling me.",
    "Noted! I'll keep that in mind.",
    "Thanks, I'll remember that.",
    "Good to know!",
)

_ANIMALS = ("cat", "dog", "parrot", "rabbit", "hamster", "tortoise")
_RELATIONS = ("sister", "brother", "best friend", "boss", "neighbour", "cousin", "grandmother", "flatmate")

_PLACES = (
    ("home_city", "I live in {v}.|I moved to {v} a few years ago and I live there now.|My home is in {v}.",
     "Where do I live?|Which city do I live in?|Do you remember where my home is?",
     "You live in {v}.|Your home is in {v}."),
    ("birth_city", "I was born in {v}.|I grew up in {v}; that's where I was born.",
     "Where was I born?|Which city was I born in?", "You were born in {v}.|Your birthplace is {v}."),
    ("dream_trip", "I've always wanted to visit {v}.|My dream trip is to {v}.",
     "Which city do I dream of visiting?|Where is my dream trip?", ("You've always wanted to visit {v}.|"
     "Your dream trip is to {v}.")),
    ("last_holiday", "Last summer I went on holiday to {v}.|I spent my last holiday in {v}.",
     "Where did I go on my last holiday?|Which city did I visit last summer?",
     "You went on holiday to {v}.|Your last holiday was in {v}."),
)

_FAVOURITES = {
    "colour": "teal maroon turquoise crimson amber olive_green navy_blue coral mustard_yellow magenta burgundy "
    "indigo charcoal_grey sea_green",
    "food": "lasagne ramen paella tacos risotto falafel moussaka pad_thai goulash pierogi biryani ceviche "
    "shakshuka gnocchi",
    "fruit": "mango papaya pineapple kiwi pomegranate lychee apricot blackberry fig guava passion_fruit "
    "nectarine plum raspberry",
    "drink": "green_tea espresso lemonade hot_chocolate mint_tea iced_coffee chai_latte ginger_beer "
    "sparkling_water matcha kombucha cider",
    "sport": "tennis basketball volleyball rugby badminton ping_pong handball water_polo fencing rowing "
    "cycling ice_hockey baseball surfing",
    "instrument": "cello violin trumpet saxophone flute clarinet harp ukulele accordion banjo drums oboe "
    "trombone mandolin",
    "film genre": "science_fiction horror romantic_comedy documentary western thriller animation musical "
    "film_noir fantasy mystery",
    "flower": "tulip sunflower orchid daisy peony marigold magnolia jasmine hibiscus carnation poppy dahlia",
    "dessert": "tiramisu cheesecake apple_pie crème_brûlée baklava panna_cotta brownies churros pavlova "
    "eclairs gelato rice_pudding carrot_cake",
    "board game": "chess Scrabble Monopoly backgammon Catan checkers Cluedo Ticket_to_Ride Carcassonne mahjong "
    "dominoes",
    "music genre": "jazz reggae blues heavy_metal hip_hop bossa_nova techno folk_music opera punk_rock soul "
    "flamenco",
    "bird": "robin kingfisher owl puffin hummingbird heron flamingo peacock magpie swallow eagle toucan",
    "author": "Tolstoy Jane_Austen Murakami Toni_Morrison Borges Agatha_Christie Tolkien Italo_Calvino "
    "Virginia_Woolf Orhan_Pamuk Chekhov Dostoevsky",
    "vegetable": "broccoli spinach asparagus aubergine courgette cauliflower artichoke beetroot kale leek "
    "sweet_potato",
}

_CUSTOM = (
    ("job", "I work as {av}.|I'm {av} by profession.|My job? I'm {av}.",
     "What do I do for a living?|What is my job?|Do you remember my profession?",
     "You work as {av}.|You're {av}.",
     ("nurse carpenter architect pharmacist software_developer librarian electrician dentist chef pilot plumber "
     "journalist veterinarian translator firefighter accountant photographer baker marine_biologist")),
    ("car", "I drive {av}.|My car is {av}.|I just bought {av}.",
     "What car do I drive?|What kind of car do I have?", "You drive {av}.|Your car is {av}.",
     "Volvo Toyota Skoda Fiat Subaru Peugeot Mazda Renault Kia Honda Tesla Volkswagen Citroen Hyundai Audi"),
    ("language", "I'm learning {v} at the moment.|I've started taking {v} lessons.",
     "Which language am I learning?|What language did I say I'm studying?",
     "You are learning {v}.|You're taking {v} lessons.",
     ("Portuguese Japanese Swahili Korean Finnish Greek Polish Turkish Dutch Hindi Arabic Icelandic Vietnamese "
     "Hungarian Czech Welsh")),
    ("hobby", "My favourite hobby is {v}.|In my spare time I love {v}.",
     "What is my hobby?|What do I like doing in my spare time?", "You love {v}.|Your hobby is {v}.",
     ("knitting rock_climbing pottery birdwatching woodworking gardening baking_bread stargazing origami "
     "calligraphy kayaking beekeeping salsa_dancing sketching geocaching")),
    ("allergy", "I'm allergic to {v}.|I have an allergy to {v}.", "What am I allergic to?|What is my allergy?",
     "You are allergic to {v}.|You have an allergy to {v}.",
     "peanuts shellfish pollen penicillin dust_mites wasp_stings latex sesame strawberries gluten soy walnuts"),
    ("birth_month", "My birthday is in {v}.|I was born in the month of {v}.",
     "In which month is my birthday?|When is my birthday?", "Your birthday is in {v}.",
     "January February March April May June July August September October November December"),
)
_ADJECTIVES = ["copper", "silent", "rapid", "frozen", "golden", "hidden", "lucky", "brave", "sleepy", "velvet"]
_NOUNS = ["falcon", "otter", "lantern", "harbor", "meadow", "comet", "anchor", "walrus", "canyon", "glacier"]
_AIRLINES = ["TP", "LH", "BA", "AF", "KL", "IB", "SK", "AY", "OS", "LX"]
_FLIGHT_NUMBERS = ["214", "387", "452", "519", "608", "731", "846", "903", "1120", "1275"]


def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split("|"))


def _build_fact_types() -> tuple[FactType, ...]:
    types: list[FactType] = []
    for i, animal in enumerate(_ANIMALS):
        types.append(FactType(
            key=f"{animal.replace(' ', '_')}_name",
            statements=(f"My {animal} is called {{v}}.", f"I have a {animal} named {{v}}.",
                        f"Our {animal}'s name is {{v}}."),
            questions=(f"What is my {animal} called?", f"Do you remember my {animal}'s name?",
                       f"What's the name of my {animal}?"),
            answers=(f"Your {animal} is called {{v}}.", f"Your {animal}'s name is {{v}}."),
            acks=(f"{{v}} is a lovely name for a {animal}!", f"Aww, hello to {{v}} the {animal}!"),
            details=_PET_DETAILS,
            values=_PET_NAMES[i * 10 : (i + 1) * 10],
        ))
    for i, rel in enumerate(_RELATIONS):
        types.append(FactType(
            key=f"{rel.replace(' ', '_')}_name",
            statements=(f"My {rel} is called {{v}}.", f"My {rel}'s name is {{v}}.",
                        f"I should tell you that my {rel} is named {{v}}."),
            questions=(f"What is my {rel}'s name?", f"What is my {rel} called?",
                       f"Do you remember the name of my {rel}?"),
            answers=(f"Your {rel} is called {{v}}.", f"Your {rel}'s name is {{v}}."),
            acks=(f"{{v}} is a nice name. Thanks for telling me about your {rel}.",),
            details=_PERSON_DETAILS,
            values=_PERSON_NAMES[i * 10 : (i + 1) * 10],
        ))
    for i, (key, statements, questions, answers) in enumerate(_PLACES):
        types.append(FactType(
            key=key, statements=_split(statements), questions=_split(questions), answers=_split(answers),
            acks=("{v} sounds like a wonderful place.", "Oh, {v}! Noted."), details=_PLACE_DETAILS,
            values=_CITIES[i * 20 : (i + 1) * 20],
        ))
    for thing, values in _FAVOURITES.items():
        types.append(FactType(
            key=f"favourite_{thing.replace(' ', '_')}",
            statements=(f"My favourite {thing} is {{v}}.", f"I really love {{v}}; it's my favourite {thing}.",
                        f"If I had to pick a favourite {thing}, it would be {{v}}."),
            questions=(f"What is my favourite {thing}?", f"Which {thing} do I like best?",
                       f"Do you remember my favourite {thing}?"),
            answers=(f"Your favourite {thing} is {{v}}.", f"You said your favourite {thing} is {{v}}."),
            acks=("{v} is a great choice!", f"Nice, {{v}} as your favourite {thing}. I'll remember."),
            details=_LIKE_DETAILS,
            values=_words(values),
        ))
    for key, statements, questions, answers, values in _CUSTOM:
        types.append(FactType(
            key=key, statements=_split(statements), questions=_split(questions), answers=_split(answers),
            acks=(), details=_GENERIC_DETAILS, values=_words(values),
        ))
    types.append(FactType(
        key="wifi_password",
        statements=("The password for our wifi is {v}.", "Our wifi password is {v}.",
                    "Please remember the wifi password: {v}."),
        questions=("What is our wifi password?", "Can you remind me of the wifi password?"),
        answers=("The wifi password is {v}.", "Your wifi password is {v}."),
        acks=("Saved: the wifi password is {v}.",), details=_GENERIC_DETAILS,
        values=tuple(f"{a}-{n}" for a in _ADJECTIVES for n in _NOUNS),
    ))
    types.append(FactType(
        key="flight_number",
        statements=("My flight number is {v}.", "I'm flying tomorrow on flight {v}."),
        questions=("What is my flight number?", "Which flight am I on?"),
        answers=("Your flight number is {v}.", "You are on flight {v}."),
        acks=("Flight {v}, got it. Have a good trip!",), details=_GENERIC_DETAILS,
        values=tuple(f"{a}{n}" for a in _AIRLINES for n in _FLIGHT_NUMBERS),
    ))
    return tuple(types)


FACT_TYPES: tuple[FactType, ...] = _build_fact_types()
"""Every fact type (40+), in a fixed order."""

GENERIC_ACKS: tuple[str, ...] = _GENERIC_ACKS
"""Acknowledgements that fit any statement."""

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

__all__ = ["FACT_TYPES", "FILLER_QA", "GENERIC_ACKS", "FactType"]
