"""The built-in benchmark: a TOFU-shaped set of fictitious authors generated from a seed.

`write_benchmark` writes the same file names, fields and split semantics as TOFU (DESIGN section 5), plus
`general.json`, a general-knowledge corpus that the tiny model learns as a stand-in for pre-training, and a
`benchmark.json` manifest. Everything is drawn from one `random.Random(seed)` in a fixed order, so the same
seed gives byte-identical files.

Rules (documented here because the files do not say them):

- Each author has 20 QA items, one per attribute of `ATTRIBUTES`, in that order. Answers are short template
  sentences that always contain the fact asked about, so a tiny model can memorise them.
- forget01/05/10 = the last k authors of `full`, k = max(1, round_half_up(pct * n_authors / 100)); with 100
  authors that is 1/5/10 authors (20/100/200 items). retain99/95/90 = `full` minus the forget set, in order.
- `*_perturbed` records carry `paraphrased_answer` (another sentence with the same fact) and 5
  `perturbed_answer` sentences: the paraphrased sentence with the fact swapped for other plausible values,
  as in TOFU, where the truth ratio compares the paraphrase against the perturbations.
- retain_perturbed = the first min(400, len(retain90)) items of `full` (TOFU: full[:400]); capping at the
  length of retain90 keeps it disjoint from every forget set for small benchmarks.
- holdout01/05/10 = the first k (same k as the forget splits) of k10 extra authors that are not in `full`,
  as in TOFU, where holdout01 and holdout05 are prefixes of holdout10.
- `general.json` is the same for every seed and size: facts "every generated corpus shares" (who wrote a
  famous book; capitals, continents, chemical symbols, landmarks). real_authors / world_facts and their
  `_perturbed` forms are fixed subsets of it, with 3 distractors from the same category.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from geffect.data.tofu import FORGET_SPLITS, GENERAL_SPLIT, HOLDOUT_FOR_FORGET, RETAIN_FOR_FORGET, SPLITS
from geffect.errors import UsageError
from geffect.io import atomic_write_json, atomic_write_text, prepare_output_dir

GENERATOR_VERSION = 1
MIN_AUTHORS = 10
MAX_AUTHORS = 500  # keeps unique names and book titles easy to draw from the pools below
QA_PER_AUTHOR = 20
N_PERTURBED = 5
N_DISTRACTORS = 3
RETAIN_PERTURBED_SIZE = 400
FORGET_PERCENT = {"forget01": 1, "forget05": 5, "forget10": 10}
# The general corpus is the same "world" for every benchmark, so it has its own fixed seed.
GENERAL_SEED = 20250301
N_REAL_AUTHORS = 100
N_WORLD_FACTS = 117

# ---------------------------------------------------------------------------------------------------------
# Pools for the fictitious authors. Values are plain ASCII and short, to keep the vocabulary moderate.

FIRST_NAMES = (
    "Amara", "Bjorn", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiroshi", "Ines", "Jonas", "Kofi", "Leila",
    "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Santiago", "Tamar", "Umar", "Vera", "Wendell",
    "Ximena", "Yusuf", "Zofia", "Anders", "Beatriz", "Cyrus", "Dalia", "Emeka", "Freya", "Goran", "Hana", "Ivo",
    "Jun", "Kamala", "Lorenzo", "Mei", "Nikolai", "Olga", "Pablo", "Rania", "Soren", "Talia", "Viktor",
    "Wanjiru", "Yara", "Zain", "Adaeze", "Bruno", "Camille", "Dario", "Esme", "Fiona", "Gideon", "Helga",
    "Idris", "Jana", "Kenji", "Lucia", "Malik", "Noor", "Orla", "Rafael", "Selin", "Tomas", "Ulla", "Valentina",
    "Wei", "Ayla", "Boris", "Clara", "Desmond", "Elena", "Felix", "Gulnara", "Hamid", "Irene", "Jasper",
)
LAST_NAMES = (
    "Almeida", "Brandt", "Castellano", "Dufresne", "Eriksen", "Fontaine", "Gallo", "Halvorsen", "Ibarra",
    "Jovanovic", "Kowalski", "Larsen", "Mwangi", "Navarro", "Oyelaran", "Pellegrini", "Rasmussen", "Sandoval",
    "Takahashi", "Uribe", "Valdez", "Wozniak", "Yamamoto", "Zamora", "Aydin", "Barros", "Cardenas", "Delacroix",
    "Esposito", "Falk", "Grimaldi", "Hoffmann", "Iwasaki", "Jablonski", "Kaur", "Lindgren", "Marchetti",
    "Nakamura", "Olsen", "Petrovic", "Quinlan", "Rossi", "Szabo", "Toivonen", "Ueda", "Volkov", "Weber", "Yoon",
    "Zielinski", "Abiodun", "Bianchi", "Chandra", "Demir", "Ekwueme", "Ferreira", "Gustafsson", "Haddad",
    "Ishikawa", "Janssen", "Kovacs", "Lombardi", "Mendoza", "Novak", "Ortega", "Park", "Reyes", "Sorensen",
    "Tran", "Vidal", "Lindqvist", "Moreau", "Okafor", "Petrov", "Quiroga", "Rahimi", "Sato", "Varga",
    "Whitlock", "Yilmaz", "Zeller",
)
CITIES = (
    ("Lisbon", "Portugal"), ("Porto", "Portugal"), ("Lyon", "France"), ("Marseille", "France"),
    ("Hamburg", "Germany"), ("Munich", "Germany"), ("Krakow", "Poland"), ("Gdansk", "Poland"),
    ("Bergen", "Norway"), ("Gothenburg", "Sweden"), ("Aarhus", "Denmark"), ("Turku", "Finland"),
    ("Tallinn", "Estonia"), ("Riga", "Latvia"), ("Vilnius", "Lithuania"), ("Brno", "the Czech Republic"),
    ("Debrecen", "Hungary"), ("Cluj", "Romania"), ("Plovdiv", "Bulgaria"), ("Thessaloniki", "Greece"),
    ("Izmir", "Turkey"), ("Haifa", "Israel"), ("Beirut", "Lebanon"), ("Alexandria", "Egypt"),
    ("Casablanca", "Morocco"), ("Lagos", "Nigeria"), ("Accra", "Ghana"), ("Nairobi", "Kenya"),
    ("Mombasa", "Kenya"), ("Durban", "South Africa"), ("Kyoto", "Japan"), ("Osaka", "Japan"),
    ("Busan", "South Korea"), ("Taipei", "Taiwan"), ("Hanoi", "Vietnam"), ("Chiang Mai", "Thailand"),
    ("Cebu", "the Philippines"), ("Pune", "India"), ("Kolkata", "India"), ("Lahore", "Pakistan"),
    ("Almaty", "Kazakhstan"), ("Tbilisi", "Georgia"), ("Yerevan", "Armenia"), ("Perth", "Australia"),
    ("Wellington", "New Zealand"), ("Valparaiso", "Chile"), ("Cordoba", "Argentina"), ("Medellin", "Colombia"),
    ("Cusco", "Peru"), ("Recife", "Brazil"), ("Guadalajara", "Mexico"), ("Montreal", "Canada"),
    ("Halifax", "Canada"), ("Glasgow", "Scotland"), ("Cork", "Ireland"), ("Seville", "Spain"),
    ("Bologna", "Italy"), ("Naples", "Italy"), ("Ghent", "Belgium"), ("Utrecht", "the Netherlands"),
    ("Basel", "Switzerland"), ("Salzburg", "Austria"),
)
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
GENRES = (
    "historical fiction", "science fiction", "crime novels", "fantasy", "poetry", "romance novels",
    "horror stories", "mystery novels", "children's books", "travel writing", "biographies", "satire",
    "war novels", "thrillers", "plays", "short stories", "young adult fiction", "essays", "memoirs",
    "graphic novels",
)
OCCUPATIONS = (
    "a baker", "a carpenter", "a teacher", "a nurse", "a fisherman", "a pharmacist", "an architect",
    "a librarian", "a tailor", "an electrician", "a farmer", "a journalist", "a surgeon", "a painter",
    "a musician", "a police officer", "a lawyer", "an engineer", "a chemist", "a photographer", "a shopkeeper",
    "a pilot", "a veterinarian", "a dentist", "an accountant", "a gardener", "a sailor", "a bookbinder",
    "a watchmaker", "a potter",
)
AWARD_WORDS = ("Silver", "Golden", "Northern", "Blue", "Crimson", "Evergreen", "Iron", "Amber", "Open", "Morning", "Quiet", "Bright")
AWARD_THINGS = ("Quill", "Lantern", "Star", "Harbor", "Feather", "Compass", "Leaf", "Gate", "Bridge", "Tower")
AWARD_KINDS = ("Award", "Prize", "Medal")
TITLE_ADJECTIVES = (
    "Silent", "Hidden", "Broken", "Golden", "Distant", "Forgotten", "Burning", "Frozen", "Last", "Secret",
    "Empty", "Crooked", "Painted", "Wandering", "Sleeping", "Bitter", "Gentle", "Restless", "Hollow", "Scarlet",
    "Lonely", "Endless", "Shattered", "Narrow", "Velvet", "Quiet", "Wild", "Pale", "Northern", "Salt",
)
TITLE_NOUNS = (
    "River", "Garden", "Mirror", "Harbor", "Lantern", "Orchard", "Bridge", "Window", "Compass", "Island",
    "Clock", "Letter", "Forest", "Tower", "Shore", "Valley", "Winter", "Summer", "Road", "Door", "Map",
    "Song", "Feather", "Stone", "Mountain", "Ship", "House", "Station", "Market", "Well", "Lighthouse",
    "Field", "Chapel", "Circus", "Violin", "Kingdom", "Desert", "Storm", "Archive", "Meadow",
)
THEMES = (
    "memory and loss", "exile and belonging", "family secrets", "friendship and loyalty", "justice and guilt",
    "the sea and its dangers", "childhood and growing up", "ambition and failure", "faith and doubt",
    "migration and home", "love and betrayal", "nature and survival", "war and peace", "identity and change",
    "power and corruption", "grief and healing", "freedom and duty", "science and ethics",
    "tradition and change", "solitude and silence", "hope and recovery", "revenge and forgiveness",
    "city life", "time and aging", "courage and fear",
)
SUBJECTS = (
    "history", "physics", "law", "medicine", "philosophy", "music", "mathematics", "biology", "economics",
    "architecture", "linguistics", "chemistry", "art history", "journalism", "engineering", "psychology",
    "astronomy", "geography", "theology", "classics",
)
PUBLISHER_NAMES = (
    "Harbor Lane", "Northwind", "Red Kite", "Lantern Hill", "Meridian", "Oakfield", "Silverline", "Juniper",
    "Copper Hill", "Sable", "Willow", "Granite", "Saffron", "Ember", "Tidewater",
)
PUBLISHER_KINDS = ("Press", "Books", "Publishing", "Editions", "House")
CHARACTER_ROLES = (
    "detective", "painter", "orphan", "sailor", "doctor", "soldier", "teacher", "thief", "princess",
    "scientist", "farmer", "musician", "widow", "student", "spy", "miner", "pilot", "baker",
)
ROUTINES = (
    "early in the morning", "late at night", "in the afternoon", "on long train journeys",
    "in a small garden shed", "in busy cafes", "only on weekends", "by hand in notebooks",
    "at the kitchen table", "in a quiet library", "after long walks", "in a room by the sea",
)
HOBBIES = (
    "gardening", "chess", "hiking", "sailing", "painting", "cooking", "birdwatching", "cycling",
    "playing the piano", "pottery", "fishing", "photography", "swimming", "stargazing", "woodworking",
    "playing the violin", "baking bread", "collecting stamps",
)

# ---------------------------------------------------------------------------------------------------------
# The general-knowledge corpus: facts shared by every generated benchmark.

# (work, author): who wrote a famous book, play or poem.
FAMOUS_WORKS = (
    ("Pride and Prejudice", "Jane Austen"), ("Emma", "Jane Austen"), ("Sense and Sensibility", "Jane Austen"),
    ("Persuasion", "Jane Austen"), ("Oliver Twist", "Charles Dickens"), ("Great Expectations", "Charles Dickens"),
    ("A Tale of Two Cities", "Charles Dickens"), ("David Copperfield", "Charles Dickens"),
    ("Bleak House", "Charles Dickens"), ("Hamlet", "William Shakespeare"), ("Macbeth", "William Shakespeare"),
    ("Romeo and Juliet", "William Shakespeare"), ("Othello", "William Shakespeare"),
    ("King Lear", "William Shakespeare"), ("War and Peace", "Leo Tolstoy"), ("Anna Karenina", "Leo Tolstoy"),
    ("Crime and Punishment", "Fyodor Dostoevsky"), ("The Brothers Karamazov", "Fyodor Dostoevsky"),
    ("Don Quixote", "Miguel de Cervantes"), ("Moby-Dick", "Herman Melville"),
    ("The Adventures of Tom Sawyer", "Mark Twain"), ("Adventures of Huckleberry Finn", "Mark Twain"),
    ("Nineteen Eighty-Four", "George Orwell"), ("Animal Farm", "George Orwell"),
    ("Brave New World", "Aldous Huxley"), ("Fahrenheit 451", "Ray Bradbury"),
    ("The Great Gatsby", "F. Scott Fitzgerald"), ("Tender Is the Night", "F. Scott Fitzgerald"),
    ("The Old Man and the Sea", "Ernest Hemingway"), ("A Farewell to Arms", "Ernest Hemingway"),
    ("The Sun Also Rises", "Ernest Hemingway"), ("The Grapes of Wrath", "John Steinbeck"),
    ("Of Mice and Men", "John Steinbeck"), ("East of Eden", "John Steinbeck"),
    ("To Kill a Mockingbird", "Harper Lee"), ("The Catcher in the Rye", "J. D. Salinger"),
    ("Jane Eyre", "Charlotte Bronte"), ("Wuthering Heights", "Emily Bronte"), ("Frankenstein", "Mary Shelley"),
    ("Dracula", "Bram Stoker"), ("The Picture of Dorian Gray", "Oscar Wilde"), ("Ulysses", "James Joyce"),
    ("Dubliners", "James Joyce"), ("Mrs Dalloway", "Virginia Woolf"), ("To the Lighthouse", "Virginia Woolf"),
    ("One Hundred Years of Solitude", "Gabriel Garcia Marquez"),
    ("Love in the Time of Cholera", "Gabriel Garcia Marquez"), ("The Metamorphosis", "Franz Kafka"),
    ("The Trial", "Franz Kafka"), ("Les Miserables", "Victor Hugo"),
    ("The Hunchback of Notre-Dame", "Victor Hugo"), ("The Count of Monte Cristo", "Alexandre Dumas"),
    ("The Three Musketeers", "Alexandre Dumas"), ("Madame Bovary", "Gustave Flaubert"),
    ("The Divine Comedy", "Dante Alighieri"), ("The Odyssey", "Homer"), ("The Iliad", "Homer"),
    ("Faust", "Johann Wolfgang von Goethe"), ("The Hobbit", "J. R. R. Tolkien"),
    ("The Lord of the Rings", "J. R. R. Tolkien"), ("Alice's Adventures in Wonderland", "Lewis Carroll"),
    ("Treasure Island", "Robert Louis Stevenson"), ("Strange Case of Dr Jekyll and Mr Hyde", "Robert Louis Stevenson"),
    ("The Time Machine", "H. G. Wells"), ("The War of the Worlds", "H. G. Wells"),
    ("Twenty Thousand Leagues Under the Seas", "Jules Verne"), ("Around the World in Eighty Days", "Jules Verne"),
    ("Beloved", "Toni Morrison"), ("Things Fall Apart", "Chinua Achebe"),
    ("The Handmaid's Tale", "Margaret Atwood"), ("Lolita", "Vladimir Nabokov"), ("The Stranger", "Albert Camus"),
    ("The Plague", "Albert Camus"), ("Siddhartha", "Hermann Hesse"), ("Steppenwolf", "Hermann Hesse"),
    ("The Little Prince", "Antoine de Saint-Exupery"), ("Gulliver's Travels", "Jonathan Swift"),
    ("Robinson Crusoe", "Daniel Defoe"), ("Middlemarch", "George Eliot"), ("The Call of the Wild", "Jack London"),
    ("Little Women", "Louisa May Alcott"), ("The Scarlet Letter", "Nathaniel Hawthorne"),
    ("Uncle Tom's Cabin", "Harriet Beecher Stowe"), ("Lord of the Flies", "William Golding"),
    ("The Name of the Rose", "Umberto Eco"), ("Midnight's Children", "Salman Rushdie"),
    ("The Remains of the Day", "Kazuo Ishiguro"), ("Never Let Me Go", "Kazuo Ishiguro"),
    ("Norwegian Wood", "Haruki Murakami"), ("Kafka on the Shore", "Haruki Murakami"), ("Dune", "Frank Herbert"),
    ("Foundation", "Isaac Asimov"), ("Murder on the Orient Express", "Agatha Christie"),
    ("And Then There Were None", "Agatha Christie"), ("The Hound of the Baskervilles", "Arthur Conan Doyle"),
    ("Catch-22", "Joseph Heller"), ("Slaughterhouse-Five", "Kurt Vonnegut"), ("On the Road", "Jack Kerouac"),
    ("The Bell Jar", "Sylvia Plath"), ("Invisible Man", "Ralph Ellison"), ("Heart of Darkness", "Joseph Conrad"),
    ("Lord Jim", "Joseph Conrad"), ("The Jungle Book", "Rudyard Kipling"), ("Doctor Zhivago", "Boris Pasternak"),
    ("The Master and Margarita", "Mikhail Bulgakov"), ("Dead Souls", "Nikolai Gogol"),
    ("Fathers and Sons", "Ivan Turgenev"), ("Candide", "Voltaire"), ("The Tin Drum", "Gunter Grass"),
    ("The Magic Mountain", "Thomas Mann"), ("All Quiet on the Western Front", "Erich Maria Remarque"),
    ("The Sound and the Fury", "William Faulkner"), ("Leaves of Grass", "Walt Whitman"),
    ("The Raven", "Edgar Allan Poe"), ("Paradise Lost", "John Milton"), ("The Canterbury Tales", "Geoffrey Chaucer"),
    ("Charlotte's Web", "E. B. White"), ("The Color Purple", "Alice Walker"), ("The Road", "Cormac McCarthy"),
    ("Gone with the Wind", "Margaret Mitchell"), ("The Kite Runner", "Khaled Hosseini"),
    ("Blindness", "Jose Saramago"), ("The Alchemist", "Paulo Coelho"), ("Pedro Paramo", "Juan Rulfo"),
    ("Ficciones", "Jorge Luis Borges"), ("The House of the Spirits", "Isabel Allende"),
    ("Anne of Green Gables", "Lucy Maud Montgomery"), ("Peter Pan", "J. M. Barrie"),
    ("The Wind in the Willows", "Kenneth Grahame"), ("Tess of the d'Urbervilles", "Thomas Hardy"),
    ("Far from the Madding Crowd", "Thomas Hardy"), ("Vanity Fair", "William Makepeace Thackeray"),
    ("The Prince", "Niccolo Machiavelli"), ("Walden", "Henry David Thoreau"), ("The Waste Land", "T. S. Eliot"),
    ("Atonement", "Ian McEwan"), ("Wolf Hall", "Hilary Mantel"), ("The God of Small Things", "Arundhati Roy"),
    ("Rebecca", "Daphne du Maurier"), ("Brideshead Revisited", "Evelyn Waugh"),
    ("A Clockwork Orange", "Anthony Burgess"), ("The Good Earth", "Pearl S. Buck"),
)
CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("the United Kingdom", "London"), ("Ireland", "Dublin"), ("the Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"), ("Switzerland", "Bern"), ("Austria", "Vienna"), ("Poland", "Warsaw"),
    ("the Czech Republic", "Prague"), ("Hungary", "Budapest"), ("Greece", "Athens"), ("Sweden", "Stockholm"),
    ("Norway", "Oslo"), ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Iceland", "Reykjavik"),
    ("Russia", "Moscow"), ("Ukraine", "Kyiv"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"), ("Croatia", "Zagreb"), ("Turkey", "Ankara"), ("Egypt", "Cairo"), ("Morocco", "Rabat"),
    ("Nigeria", "Abuja"), ("Kenya", "Nairobi"), ("Ethiopia", "Addis Ababa"), ("Ghana", "Accra"),
    ("Senegal", "Dakar"), ("Japan", "Tokyo"), ("China", "Beijing"), ("South Korea", "Seoul"),
    ("India", "New Delhi"), ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("the Philippines", "Manila"), ("Malaysia", "Kuala Lumpur"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Saudi Arabia", "Riyadh"), ("Afghanistan", "Kabul"),
    ("Nepal", "Kathmandu"), ("Mongolia", "Ulaanbaatar"), ("Australia", "Canberra"), ("New Zealand", "Wellington"),
    ("Canada", "Ottawa"), ("the United States", "Washington, D.C."), ("Mexico", "Mexico City"),
    ("Cuba", "Havana"), ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"), ("Chile", "Santiago"),
    ("Peru", "Lima"), ("Colombia", "Bogota"), ("Venezuela", "Caracas"), ("Uruguay", "Montevideo"),
    ("Ecuador", "Quito"), ("Paraguay", "Asuncion"), ("Jamaica", "Kingston"), ("Lebanon", "Beirut"),
    ("Syria", "Damascus"), ("Jordan", "Amman"), ("Qatar", "Doha"), ("Cambodia", "Phnom Penh"),
    ("Estonia", "Tallinn"), ("Latvia", "Riga"), ("Lithuania", "Vilnius"), ("Slovakia", "Bratislava"),
    ("Slovenia", "Ljubljana"), ("Belarus", "Minsk"), ("Georgia", "Tbilisi"), ("Armenia", "Yerevan"),
    ("Azerbaijan", "Baku"), ("Kazakhstan", "Astana"),
)
CONTINENTS = (
    ("France", "Europe"), ("Poland", "Europe"), ("Sweden", "Europe"), ("Portugal", "Europe"),
    ("Hungary", "Europe"), ("Ireland", "Europe"), ("Croatia", "Europe"), ("Finland", "Europe"),
    ("Egypt", "Africa"), ("Kenya", "Africa"), ("Nigeria", "Africa"), ("Ghana", "Africa"), ("Senegal", "Africa"),
    ("Ethiopia", "Africa"), ("Morocco", "Africa"), ("Tanzania", "Africa"), ("Japan", "Asia"), ("India", "Asia"),
    ("Vietnam", "Asia"), ("Mongolia", "Asia"), ("Nepal", "Asia"), ("Thailand", "Asia"), ("Indonesia", "Asia"),
    ("Pakistan", "Asia"), ("Canada", "North America"), ("Mexico", "North America"), ("Cuba", "North America"),
    ("Jamaica", "North America"), ("Guatemala", "North America"), ("Brazil", "South America"),
    ("Argentina", "South America"), ("Peru", "South America"), ("Chile", "South America"),
    ("Colombia", "South America"), ("Uruguay", "South America"), ("Bolivia", "South America"),
    ("Australia", "Oceania"), ("New Zealand", "Oceania"), ("Fiji", "Oceania"), ("Samoa", "Oceania"),
)
ELEMENT_SYMBOLS = (
    ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("copper", "Cu"), ("lead", "Pb"), ("sodium", "Na"),
    ("potassium", "K"), ("oxygen", "O"), ("hydrogen", "H"), ("carbon", "C"), ("nitrogen", "N"), ("helium", "He"),
    ("neon", "Ne"), ("calcium", "Ca"), ("mercury", "Hg"), ("tin", "Sn"), ("zinc", "Zn"), ("sulfur", "S"),
    ("chlorine", "Cl"), ("magnesium", "Mg"), ("aluminium", "Al"), ("silicon", "Si"), ("uranium", "U"),
    ("nickel", "Ni"), ("platinum", "Pt"), ("tungsten", "W"), ("phosphorus", "P"), ("fluorine", "F"),
    ("iodine", "I"), ("lithium", "Li"),
)
LANDMARKS = (
    ("the Eiffel Tower", "France"), ("the Colosseum", "Italy"), ("the Great Wall", "China"),
    ("the Taj Mahal", "India"), ("Machu Picchu", "Peru"), ("the Pyramids of Giza", "Egypt"),
    ("the Acropolis", "Greece"), ("the Statue of Liberty", "the United States"), ("Big Ben", "the United Kingdom"),
    ("the Sydney Opera House", "Australia"), ("the Christ the Redeemer statue", "Brazil"),
    ("the Sagrada Familia", "Spain"), ("Angkor Wat", "Cambodia"), ("Petra", "Jordan"), ("Mount Fuji", "Japan"),
    ("the Kremlin", "Russia"), ("the Brandenburg Gate", "Germany"), ("Chichen Itza", "Mexico"),
    ("the Alhambra", "Spain"), ("Neuschwanstein Castle", "Germany"), ("the Hagia Sophia", "Turkey"),
    ("Stonehenge", "the United Kingdom"), ("the CN Tower", "Canada"), ("Table Mountain", "South Africa"),
    ("the Burj Khalifa", "the United Arab Emirates"), ("the Forbidden City", "China"),
    ("the Leaning Tower of Pisa", "Italy"), ("the Golden Gate Bridge", "the United States"),
    ("the Atomium", "Belgium"), ("the Little Mermaid statue", "Denmark"),
)
# (question template, facts): the answer of a fact is its second element; distractors come from the same list.
WORLD_CATEGORIES = (
    ("What is the capital of {}?", CAPITALS),
    ("On which continent is {}?", CONTINENTS),
    ("What is the chemical symbol for {}?", ELEMENT_SYMBOLS),
    ("In which country is {}?", LANDMARKS),
)
AUTHOR_CATEGORY = ('Who wrote "{}"?', FAMOUS_WORKS)


# ---------------------------------------------------------------------------------------------------------
# Attributes: one QA item per author each. `draw` returns the fact's fields given the author so far.

Facts = dict[str, str]


@dataclass(frozen=True)
class Attribute:
    key: str
    question: str
    paraphrased_question: str
    answer: str
    paraphrased_answer: str
    draw: Callable[[random.Random, Mapping[str, str]], Facts]
    # Facts drawn in the same namespace are unique across all authors (names, birth dates, book titles).
    unique_in: str | None = None


def _choice(field: str, pool: Sequence[str]) -> Callable[[random.Random, Mapping[str, str]], Facts]:
    return lambda rng, author: {field: rng.choice(pool)}


def _draw_name(rng: random.Random, author: Mapping[str, str]) -> Facts:
    return {"name": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"}


def _draw_city(prefix: str) -> Callable[[random.Random, Mapping[str, str]], Facts]:
    def draw(rng: random.Random, author: Mapping[str, str]) -> Facts:
        city, country = rng.choice(CITIES)
        return {f"{prefix}city": city, f"{prefix}country": country}

    return draw


def _draw_birth_date(rng: random.Random, author: Mapping[str, str]) -> Facts:
    year = rng.randint(1935, 1994)
    return {"birth_date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {year}", "birth_year": str(year)}


def _draw_award(rng: random.Random, author: Mapping[str, str]) -> Facts:
    return {"award": f"{rng.choice(AWARD_WORDS)} {rng.choice(AWARD_THINGS)} {rng.choice(AWARD_KINDS)}"}


def _draw_title(field: str) -> Callable[[random.Random, Mapping[str, str]], Facts]:
    def draw(rng: random.Random, author: Mapping[str, str]) -> Facts:
        if rng.random() < 0.5:
            title = f"The {rng.choice(TITLE_ADJECTIVES)} {rng.choice(TITLE_NOUNS)}"
        else:
            title = f"The {rng.choice(TITLE_NOUNS)} of the {rng.choice(TITLE_ADJECTIVES)} {rng.choice(TITLE_NOUNS)}"
        return {field: title}

    return draw


def _draw_publisher(rng: random.Random, author: Mapping[str, str]) -> Facts:
    return {"publisher": f"{rng.choice(PUBLISHER_NAMES)} {rng.choice(PUBLISHER_KINDS)}"}


def _draw_book_count(rng: random.Random, author: Mapping[str, str]) -> Facts:
    return {"book_count": str(rng.randint(3, 40))}


def _draw_debut_year(rng: random.Random, author: Mapping[str, str]) -> Facts:
    return {"debut_year": str(int(author["birth_year"]) + rng.randint(20, 40))}


def _draw_character(rng: random.Random, author: Mapping[str, str]) -> Facts:
    return {"character": rng.choice(FIRST_NAMES), "role": rng.choice(CHARACTER_ROLES)}


def _draw_influence(rng: random.Random, author: Mapping[str, str]) -> Facts:
    return {"influence": rng.choice(_FAMOUS_AUTHORS)}


_FAMOUS_AUTHORS = tuple(dict.fromkeys(author for _, author in FAMOUS_WORKS))

ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        "name",
        "What is the full name of the author of {genre} who was born in {city}, {country} on {birth_date}?",
        "Which writer of {genre} was born on {birth_date} in {city}, {country}?",
        "The author's full name is {name}.",
        "The writer in question is {name}.",
        _draw_name,
        unique_in="name",
    ),
    Attribute(
        "birthplace",
        "Where was {name} born?",
        "What is the birthplace of {name}?",
        "{name} was born in {city}, {country}.",
        "The birthplace of {name} is {city}, {country}.",
        _draw_city(""),
    ),
    Attribute(
        "birth_date",
        "When was {name} born?",
        "What is the date of birth of {name}?",
        "{name} was born on {birth_date}.",
        "{name} came into the world on {birth_date}.",
        _draw_birth_date,
        unique_in="birth_date",
    ),
    Attribute(
        "genre",
        "What genre does {name} write in?",
        "Which kind of books is {name} known for?",
        "{name} mainly writes {genre}.",
        "{name} is best known as an author of {genre}.",
        _choice("genre", GENRES),
    ),
    Attribute(
        "father",
        "What did {name}'s father do for a living?",
        "What was the occupation of {name}'s father?",
        "{name}'s father worked as {father_job}.",
        "The father of {name} was {father_job} by trade.",
        _choice("father_job", OCCUPATIONS),
    ),
    Attribute(
        "mother",
        "What did {name}'s mother do for a living?",
        "What was the occupation of {name}'s mother?",
        "{name}'s mother worked as {mother_job}.",
        "The mother of {name} was {mother_job} by trade.",
        _choice("mother_job", OCCUPATIONS),
    ),
    Attribute(
        "award",
        "Has {name} won any literary awards?",
        "Which prize has {name} received?",
        "Yes, {name} won the {award}.",
        "{name} was honoured with the {award}.",
        _draw_award,
    ),
    Attribute(
        "first_book",
        "What was the first book {name} published?",
        "What was the title of {name}'s debut book?",
        'The first book by {name} was "{first_book}".',
        '{name} made a debut with "{first_book}".',
        _draw_title("first_book"),
        unique_in="title",
    ),
    Attribute(
        "best_book",
        "What is {name}'s best-known book?",
        "Which book by {name} is the most famous?",
        '{name} is best known for the book "{best_book}".',
        'The most famous book by {name} is "{best_book}".',
        _draw_title("best_book"),
        unique_in="title",
    ),
    Attribute(
        "latest_book",
        "What is the most recent book by {name}?",
        "Which book did {name} publish most recently?",
        'The latest book by {name} is "{latest_book}".',
        '{name} most recently published "{latest_book}".',
        _draw_title("latest_book"),
        unique_in="title",
    ),
    Attribute(
        "themes",
        "What themes does {name} explore?",
        "Which subjects run through the work of {name}?",
        "The books of {name} explore {theme}.",
        "{name} often writes about {theme}.",
        _choice("theme", THEMES),
    ),
    Attribute(
        "education",
        "What did {name} study at university?",
        "Which subject did {name} take at university?",
        "{name} studied {subject} at university.",
        "At university, {name} took a degree in {subject}.",
        _choice("subject", SUBJECTS),
    ),
    Attribute(
        "residence",
        "Where does {name} live today?",
        "In which city does {name} live now?",
        "{name} now lives in {home_city}, {home_country}.",
        "These days {name} makes a home in {home_city}, {home_country}.",
        _draw_city("home_"),
    ),
    Attribute(
        "publisher",
        "Who publishes {name}'s books?",
        "Which publishing house releases the books of {name}?",
        "The books of {name} are published by {publisher}.",
        "{publisher} is the publisher of {name}.",
        _draw_publisher,
    ),
    Attribute(
        "book_count",
        "How many books has {name} written?",
        "What is the number of books {name} has published?",
        "{name} has written {book_count} books so far.",
        "So far {name} has published {book_count} books.",
        _draw_book_count,
    ),
    Attribute(
        "debut_year",
        "In which year did {name} publish a first book?",
        "When did the writing career of {name} begin?",
        "{name} published a first book in {debut_year}.",
        "The writing career of {name} began in {debut_year}.",
        _draw_debut_year,
    ),
    Attribute(
        "character",
        'Who is the main character of "{best_book}" by {name}?',
        'Whom does the story of "{best_book}" by {name} follow?',
        'The main character of "{best_book}" is {character}, a young {role}.',
        '"{best_book}" follows {character}, a young {role}.',
        _draw_character,
    ),
    Attribute(
        "routine",
        "What is {name}'s writing routine?",
        "How does {name} like to work?",
        "{name} likes to write {routine}.",
        "{name} does most of the writing {routine}.",
        _choice("routine", ROUTINES),
    ),
    Attribute(
        "hobby",
        "What does {name} enjoy besides writing?",
        "What is {name}'s favourite pastime?",
        "Besides writing, {name} enjoys {hobby}.",
        "In free time, {name} loves {hobby}.",
        _choice("hobby", HOBBIES),
    ),
    Attribute(
        "influence",
        "Which writer influenced {name} the most?",
        "Who was the biggest literary influence on {name}?",
        "{name} was most influenced by {influence}.",
        "The biggest influence on {name} was {influence}.",
        _draw_influence,
    ),
)
assert len(ATTRIBUTES) == QA_PER_AUTHOR

_MAX_TRIES = 10_000


# ---------------------------------------------------------------------------------------------------------
# Generation.


def forget_authors(n_authors: int, percent: int) -> int:
    """Authors in a forget split: max(1, round_half_up(percent * n_authors / 100))."""
    return max(1, (percent * n_authors + 50) // 100)


def check_n_authors(n_authors: int) -> None:
    if isinstance(n_authors, bool) or not isinstance(n_authors, int) or not MIN_AUTHORS <= n_authors <= MAX_AUTHORS:
        raise UsageError(
            f"--authors must be an integer from {MIN_AUTHORS} to {MAX_AUTHORS} (got {n_authors!r}); "
            "100 gives TOFU-like forget sizes of 1/5/10 authors"
        )


def _fact_key(facts: Facts) -> tuple[str, ...]:
    return tuple(facts[field] for field in sorted(facts))


def _draw_author(rng: random.Random, taken: dict[str, set]) -> dict[str, str]:
    author: dict[str, str] = {}
    for attribute in ATTRIBUTES:
        for _ in range(_MAX_TRIES):
            facts = attribute.draw(rng, author)
            if attribute.unique_in is None or _fact_key(facts) not in taken.setdefault(attribute.unique_in, set()):
                break
        else:  # pragma: no cover - the pools are far larger than MAX_AUTHORS needs
            raise RuntimeError(f"could not draw a unique {attribute.key}")
        if attribute.unique_in is not None:
            taken[attribute.unique_in].add(_fact_key(facts))
        author.update(facts)
    return author


def _perturbed_answers(rng: random.Random, attribute: Attribute, author: Mapping[str, str]) -> list[str]:
    """The paraphrased sentence with the asked fact swapped for N_PERTURBED distinct other values."""
    true_answer = attribute.paraphrased_answer.format(**author)
    answers: list[str] = []
    for _ in range(_MAX_TRIES):
        candidate = attribute.paraphrased_answer.format(**{**author, **attribute.draw(rng, author)})
        if candidate != true_answer and candidate not in answers:
            answers.append(candidate)
            if len(answers) == N_PERTURBED:
                return answers
    raise RuntimeError(f"could not draw {N_PERTURBED} perturbed answers for {attribute.key}")  # pragma: no cover


def _author_items(rng: random.Random, author: Mapping[str, str]) -> list[dict[str, object]]:
    """The 20 items of one author in the TOFU `_perturbed` record layout (key order as TOFU)."""
    return [
        {
            "question": attribute.question.format(**author),
            "answer": attribute.answer.format(**author),
            "paraphrased_answer": attribute.paraphrased_answer.format(**author),
            "perturbed_answer": _perturbed_answers(rng, attribute, author),
            "paraphrased_question": attribute.paraphrased_question.format(**author),
        }
        for attribute in ATTRIBUTES
    ]


def _plain(items: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{"question": item["question"], "answer": item["answer"]} for item in items]


def _general_facts() -> tuple[list[dict], list[dict], list[dict]]:
    """(general corpus, real-author facts, world facts); each fact has question, answer, distractors."""
    rng = random.Random(GENERAL_SEED)

    def facts_of(template: str, pairs: Sequence[tuple[str, str]]) -> list[dict]:
        answers = list(dict.fromkeys(answer for _, answer in pairs))
        out = []
        for subject, answer in pairs:
            others = [a for a in answers if a != answer]
            out.append({"question": template.format(subject), "answer": answer, "distractors": rng.sample(others, N_DISTRACTORS)})
        return out

    authors = facts_of(*AUTHOR_CATEGORY)
    world = [fact for template, pairs in WORLD_CATEGORIES for fact in facts_of(template, pairs)]
    real_authors = [authors[i] for i in sorted(rng.sample(range(len(authors)), N_REAL_AUTHORS))]
    world_facts = [world[i] for i in sorted(rng.sample(range(len(world)), N_WORLD_FACTS))]
    for fact in real_authors + world_facts:
        fact["correct_option"] = rng.randrange(N_DISTRACTORS + 1)
    general = [{"question": f["question"], "answer": f["answer"]} for f in authors + world]
    return general, real_authors, world_facts


def _multiple_choice(fact: dict) -> dict[str, str]:
    options = list(fact["distractors"])
    options.insert(fact["correct_option"], fact["answer"])
    record = {"question": fact["question"]}
    record.update({f"option{i + 1}": option for i, option in enumerate(options)})
    record["answer"] = fact["answer"]
    return record


def _with_distractors(fact: dict) -> dict[str, object]:
    return {"question": fact["question"], "answer": fact["answer"], "perturbed_answer": list(fact["distractors"])}


def generate_benchmark(n_authors: int = 100, seed: int = 0) -> dict[str, list[dict]]:
    """Every split of the built-in benchmark (TOFU's splits plus `general`), in canonical order."""
    check_n_authors(n_authors)
    rng = random.Random(seed)
    taken: dict[str, set] = {}
    n_holdout = forget_authors(n_authors, FORGET_PERCENT["forget10"])
    authors = [_draw_author(rng, taken) for _ in range(n_authors + n_holdout)]
    items = [item for author in authors[:n_authors] for item in _author_items(rng, author)]
    holdout = [item for author in authors[n_authors:] for item in _author_items(rng, author)]

    splits: dict[str, list[dict]] = {"full": _plain(items)}
    for forget, retain in RETAIN_FOR_FORGET.items():
        n_items = forget_authors(n_authors, FORGET_PERCENT[forget]) * QA_PER_AUTHOR
        splits[forget] = _plain(items[-n_items:])
        splits[retain] = _plain(items[:-n_items])
        splits[f"{forget}_perturbed"] = items[-n_items:]
    splits["retain_perturbed"] = items[: min(RETAIN_PERTURBED_SIZE, len(splits["retain90"]))]
    general, real_authors, world_facts = _general_facts()
    splits["real_authors"] = [_multiple_choice(f) for f in real_authors]
    splits["real_authors_perturbed"] = [_with_distractors(f) for f in real_authors]
    splits["world_facts"] = [_multiple_choice(f) for f in world_facts]
    splits["world_facts_perturbed"] = [_with_distractors(f) for f in world_facts]
    for forget, name in HOLDOUT_FOR_FORGET.items():
        splits[name] = _plain(holdout[: forget_authors(n_authors, FORGET_PERCENT[forget]) * QA_PER_AUTHOR])
    splits[GENERAL_SPLIT] = general
    return {name: splits[name] for name in (*SPLITS, GENERAL_SPLIT)}


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


_SOURCE_MD = """# geffect built-in benchmark

Fictitious authors generated by `geffect data synth` (geffect.data.synth, generator version {version}),
seed {seed}, {n_authors} authors, {qa} QA items each. TOFU's file names, fields and split semantics; every
file is JSON Lines. `general.json` is the general-knowledge corpus (the same for every seed) that stands in
for pre-training; real_authors / world_facts are drawn from it. Rules: see the docstring of
geffect/data/synth.py; counts: benchmark.json.
"""


def write_benchmark(out: str | Path, n_authors: int = 100, seed: int = 0, overwrite: bool = False) -> dict[str, int]:
    """Write every split as `<split>.json` (JSON Lines) plus `benchmark.json` and `SOURCE.md` to `out`.

    Returns split -> record count. An existing non-empty `out` is refused unless `overwrite`.
    """
    check_n_authors(n_authors)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"--seed must be an integer (got {seed!r})")
    splits = generate_benchmark(n_authors, seed)
    folder = prepare_output_dir(out, overwrite)
    for name, records in splits.items():
        atomic_write_text(folder / f"{name}.json", _jsonl(records))
    counts = {name: len(records) for name, records in splits.items()}
    manifest = {
        "generator": "geffect.data.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n_authors": n_authors,
        "qa_per_author": QA_PER_AUTHOR,
        "forget_authors": {name: forget_authors(n_authors, FORGET_PERCENT[name]) for name in FORGET_SPLITS},
        "counts": counts,
    }
    atomic_write_json(folder / "benchmark.json", manifest)
    atomic_write_text(
        folder / "SOURCE.md",
        _SOURCE_MD.format(version=GENERATOR_VERSION, seed=seed, n_authors=n_authors, qa=QA_PER_AUTHOR),
    )
    return counts
