"""The built-in benchmark: a TOFU-shaped set of fictitious authors generated from a seed.

`write_benchmark` writes the same file names, fields and split semantics as TOFU (DESIGN section 5), plus
`general.json`, a general-knowledge corpus that the tiny model learns as a stand-in for pre-training, and a
`benchmark.json` manifest. Everything is drawn from one `random.Random(seed)` in a fixed order, so the same
seed gives byte-identical files.

Rules (documented here because the files do not say them):

- Each author has 10 facts (`FACTS`) and 20 QA items: every fact is asked twice, in two phrasings, in that
  order (TOFU's 20 questions per author also keep returning to the same profile facts). Answers are short
  template sentences that always contain the fact asked about, so a tiny model can memorise them; two
  phrasings per fact let it do so in half the epochs of 20 unrelated facts (benchmarks/bench_finetune.py).
- forget01/05/10 = the last k authors of `full`, k = max(1, round_half_up(pct * n_authors / 100)); with 100
  authors that is 1/5/10 authors (20/100/200 items). retain99/95/90 = `full` minus the forget set, in order.
- `*_perturbed` records carry `paraphrased_question` / `paraphrased_answer`, a third phrasing of the fact that
  is never trained on (as in TOFU), and 5 `perturbed_answer` sentences: the paraphrased sentence with the
  fact swapped for other plausible values; the truth ratio compares the paraphrase against them.
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
from geffect.io import atomic_write_json, atomic_write_text, staged_output_dir

GENERATOR_VERSION = 2
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
    "Amara",
    "Bjorn",
    "Chiara",
    "Dmitri",
    "Elif",
    "Farid",
    "Greta",
    "Hiroshi",
    "Ines",
    "Jonas",
    "Kofi",
    "Leila",
    "Mateo",
    "Nadia",
    "Oskar",
    "Priya",
    "Quentin",
    "Rosa",
    "Santiago",
    "Tamar",
    "Umar",
    "Vera",
    "Wendell",
    "Ximena",
    "Yusuf",
    "Zofia",
    "Anders",
    "Beatriz",
    "Cyrus",
    "Dalia",
    "Emeka",
    "Freya",
    "Goran",
    "Hana",
    "Ivo",
    "Jun",
    "Kamala",
    "Lorenzo",
    "Mei",
    "Nikolai",
    "Olga",
    "Pablo",
    "Rania",
    "Soren",
    "Talia",
    "Viktor",
    "Wanjiru",
    "Yara",
    "Zain",
    "Adaeze",
    "Bruno",
    "Camille",
    "Dario",
    "Esme",
    "Fiona",
    "Gideon",
    "Helga",
    "Idris",
    "Jana",
    "Kenji",
    "Lucia",
    "Malik",
    "Noor",
    "Orla",
    "Rafael",
    "Selin",
    "Tomas",
    "Ulla",
    "Valentina",
    "Wei",
    "Ayla",
    "Boris",
    "Clara",
    "Desmond",
    "Elena",
    "Felix",
    "Gulnara",
    "Hamid",
    "Irene",
    "Jasper",
)
LAST_NAMES = (
    "Almeida",
    "Brandt",
    "Castellano",
    "Dufresne",
    "Eriksen",
    "Fontaine",
    "Gallo",
    "Halvorsen",
    "Ibarra",
    "Jovanovic",
    "Kowalski",
    "Larsen",
    "Mwangi",
    "Navarro",
    "Oyelaran",
    "Pellegrini",
    "Rasmussen",
    "Sandoval",
    "Takahashi",
    "Uribe",
    "Valdez",
    "Wozniak",
    "Yamamoto",
    "Zamora",
    "Aydin",
    "Barros",
    "Cardenas",
    "Delacroix",
    "Esposito",
    "Falk",
    "Grimaldi",
    "Hoffmann",
    "Iwasaki",
    "Jablonski",
    "Kaur",
    "Lindgren",
    "Marchetti",
    "Nakamura",
    "Olsen",
    "Petrovic",
    "Quinlan",
    "Rossi",
    "Szabo",
    "Toivonen",
    "Ueda",
    "Volkov",
    "Weber",
    "Yoon",
    "Zielinski",
    "Abiodun",
    "Bianchi",
    "Chandra",
    "Demir",
    "Ekwueme",
    "Ferreira",
    "Gustafsson",
    "Haddad",
    "Ishikawa",
    "Janssen",
    "Kovacs",
    "Lombardi",
    "Mendoza",
    "Novak",
    "Ortega",
    "Park",
    "Reyes",
    "Sorensen",
    "Tran",
    "Vidal",
    "Lindqvist",
    "Moreau",
    "Okafor",
    "Petrov",
    "Quiroga",
    "Rahimi",
    "Sato",
    "Varga",
    "Whitlock",
    "Yilmaz",
    "Zeller",
)
CITIES = (
    ("Lisbon", "Portugal"),
    ("Porto", "Portugal"),
    ("Lyon", "France"),
    ("Marseille", "France"),
    ("Hamburg", "Germany"),
    ("Munich", "Germany"),
    ("Krakow", "Poland"),
    ("Gdansk", "Poland"),
    ("Bergen", "Norway"),
    ("Gothenburg", "Sweden"),
    ("Aarhus", "Denmark"),
    ("Turku", "Finland"),
    ("Tallinn", "Estonia"),
    ("Riga", "Latvia"),
    ("Vilnius", "Lithuania"),
    ("Brno", "the Czech Republic"),
    ("Debrecen", "Hungary"),
    ("Cluj", "Romania"),
    ("Plovdiv", "Bulgaria"),
    ("Thessaloniki", "Greece"),
    ("Izmir", "Turkey"),
    ("Haifa", "Israel"),
    ("Beirut", "Lebanon"),
    ("Alexandria", "Egypt"),
    ("Casablanca", "Morocco"),
    ("Lagos", "Nigeria"),
    ("Accra", "Ghana"),
    ("Nairobi", "Kenya"),
    ("Mombasa", "Kenya"),
    ("Durban", "South Africa"),
    ("Kyoto", "Japan"),
    ("Osaka", "Japan"),
    ("Busan", "South Korea"),
    ("Taipei", "Taiwan"),
    ("Hanoi", "Vietnam"),
    ("Chiang Mai", "Thailand"),
    ("Cebu", "the Philippines"),
    ("Pune", "India"),
    ("Kolkata", "India"),
    ("Lahore", "Pakistan"),
    ("Almaty", "Kazakhstan"),
    ("Tbilisi", "Georgia"),
    ("Yerevan", "Armenia"),
    ("Perth", "Australia"),
    ("Wellington", "New Zealand"),
    ("Valparaiso", "Chile"),
    ("Cordoba", "Argentina"),
    ("Medellin", "Colombia"),
    ("Cusco", "Peru"),
    ("Recife", "Brazil"),
    ("Guadalajara", "Mexico"),
    ("Montreal", "Canada"),
    ("Halifax", "Canada"),
    ("Glasgow", "Scotland"),
    ("Cork", "Ireland"),
    ("Seville", "Spain"),
    ("Bologna", "Italy"),
    ("Naples", "Italy"),
    ("Ghent", "Belgium"),
    ("Utrecht", "the Netherlands"),
    ("Basel", "Switzerland"),
    ("Salzburg", "Austria"),
)
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
GENRES = (
    "historical fiction",
    "science fiction",
    "crime novels",
    "fantasy",
    "poetry",
    "romance novels",
    "horror stories",
    "mystery novels",
    "children's books",
    "travel writing",
    "biographies",
    "satire",
    "war novels",
    "thrillers",
    "plays",
    "short stories",
    "young adult fiction",
    "essays",
    "memoirs",
    "graphic novels",
)
OCCUPATIONS = (
    "a baker",
    "a carpenter",
    "a teacher",
    "a nurse",
    "a fisherman",
    "a pharmacist",
    "an architect",
    "a librarian",
    "a tailor",
    "an electrician",
    "a farmer",
    "a journalist",
    "a surgeon",
    "a painter",
    "a musician",
    "a police officer",
    "a lawyer",
    "an engineer",
    "a chemist",
    "a photographer",
    "a shopkeeper",
    "a pilot",
    "a veterinarian",
    "a dentist",
    "an accountant",
    "a gardener",
    "a sailor",
    "a bookbinder",
    "a watchmaker",
    "a potter",
)
AWARD_WORDS = (
    "Silver",
    "Golden",
    "Northern",
    "Blue",
    "Crimson",
    "Evergreen",
    "Iron",
    "Amber",
    "Open",
    "Morning",
    "Quiet",
    "Bright",
)
AWARD_THINGS = ("Quill", "Lantern", "Star", "Harbor", "Feather", "Compass", "Leaf", "Gate", "Bridge", "Tower")
AWARD_KINDS = ("Award", "Prize", "Medal")
TITLE_ADJECTIVES = (
    "Silent",
    "Hidden",
    "Broken",
    "Golden",
    "Distant",
    "Forgotten",
    "Burning",
    "Frozen",
    "Last",
    "Secret",
    "Empty",
    "Crooked",
    "Painted",
    "Wandering",
    "Sleeping",
    "Bitter",
    "Gentle",
    "Restless",
    "Hollow",
    "Scarlet",
    "Lonely",
    "Endless",
    "Shattered",
    "Narrow",
    "Velvet",
    "Quiet",
    "Wild",
    "Pale",
    "Northern",
    "Salt",
)
TITLE_NOUNS = (
    "River",
    "Garden",
    "Mirror",
    "Harbor",
    "Lantern",
    "Orchard",
    "Bridge",
    "Window",
    "Compass",
    "Island",
    "Clock",
    "Letter",
    "Forest",
    "Tower",
    "Shore",
    "Valley",
    "Winter",
    "Summer",
    "Road",
    "Door",
    "Map",
    "Song",
    "Feather",
    "Stone",
    "Mountain",
    "Ship",
    "House",
    "Station",
    "Market",
    "Well",
    "Lighthouse",
    "Field",
    "Chapel",
    "Circus",
    "Violin",
    "Kingdom",
    "Desert",
    "Storm",
    "Archive",
    "Meadow",
)
THEMES = (
    "memory and loss",
    "exile and belonging",
    "family secrets",
    "friendship and loyalty",
    "justice and guilt",
    "the sea and its dangers",
    "childhood and growing up",
    "ambition and failure",
    "faith and doubt",
    "migration and home",
    "love and betrayal",
    "nature and survival",
    "war and peace",
    "identity and change",
    "power and corruption",
    "grief and healing",
    "freedom and duty",
    "science and ethics",
    "tradition and change",
    "solitude and silence",
    "hope and recovery",
    "revenge and forgiveness",
    "city life",
    "time and aging",
    "courage and fear",
)
SUBJECTS = (
    "history",
    "physics",
    "law",
    "medicine",
    "philosophy",
    "music",
    "mathematics",
    "biology",
    "economics",
    "architecture",
    "linguistics",
    "chemistry",
    "art history",
    "journalism",
    "engineering",
    "psychology",
    "astronomy",
    "geography",
    "theology",
    "classics",
)

# ---------------------------------------------------------------------------------------------------------
# The general-knowledge corpus: facts shared by every generated benchmark.

# (work, author): who wrote a famous book, play or poem.
FAMOUS_WORKS = (
    ("Pride and Prejudice", "Jane Austen"),
    ("Emma", "Jane Austen"),
    ("Sense and Sensibility", "Jane Austen"),
    ("Persuasion", "Jane Austen"),
    ("Oliver Twist", "Charles Dickens"),
    ("Great Expectations", "Charles Dickens"),
    ("A Tale of Two Cities", "Charles Dickens"),
    ("David Copperfield", "Charles Dickens"),
    ("Bleak House", "Charles Dickens"),
    ("Hamlet", "William Shakespeare"),
    ("Macbeth", "William Shakespeare"),
    ("Romeo and Juliet", "William Shakespeare"),
    ("Othello", "William Shakespeare"),
    ("King Lear", "William Shakespeare"),
    ("War and Peace", "Leo Tolstoy"),
    ("Anna Karenina", "Leo Tolstoy"),
    ("Crime and Punishment", "Fyodor Dostoevsky"),
    ("The Brothers Karamazov", "Fyodor Dostoevsky"),
    ("Don Quixote", "Miguel de Cervantes"),
    ("Moby-Dick", "Herman Melville"),
    ("The Adventures of Tom Sawyer", "Mark Twain"),
    ("Adventures of Huckleberry Finn", "Mark Twain"),
    ("Nineteen Eighty-Four", "George Orwell"),
    ("Animal Farm", "George Orwell"),
    ("Brave New World", "Aldous Huxley"),
    ("Fahrenheit 451", "Ray Bradbury"),
    ("The Great Gatsby", "F. Scott Fitzgerald"),
    ("Tender Is the Night", "F. Scott Fitzgerald"),
    ("The Old Man and the Sea", "Ernest Hemingway"),
    ("A Farewell to Arms", "Ernest Hemingway"),
    ("The Sun Also Rises", "Ernest Hemingway"),
    ("The Grapes of Wrath", "John Steinbeck"),
    ("Of Mice and Men", "John Steinbeck"),
    ("East of Eden", "John Steinbeck"),
    ("To Kill a Mockingbird", "Harper Lee"),
    ("The Catcher in the Rye", "J. D. Salinger"),
    ("Jane Eyre", "Charlotte Bronte"),
    ("Wuthering Heights", "Emily Bronte"),
    ("Frankenstein", "Mary Shelley"),
    ("Dracula", "Bram Stoker"),
    ("The Picture of Dorian Gray", "Oscar Wilde"),
    ("Ulysses", "James Joyce"),
    ("Dubliners", "James Joyce"),
    ("Mrs Dalloway", "Virginia Woolf"),
    ("To the Lighthouse", "Virginia Woolf"),
    ("One Hundred Years of Solitude", "Gabriel Garcia Marquez"),
    ("Love in the Time of Cholera", "Gabriel Garcia Marquez"),
    ("The Metamorphosis", "Franz Kafka"),
    ("The Trial", "Franz Kafka"),
    ("Les Miserables", "Victor Hugo"),
    ("The Hunchback of Notre-Dame", "Victor Hugo"),
    ("The Count of Monte Cristo", "Alexandre Dumas"),
    ("The Three Musketeers", "Alexandre Dumas"),
    ("Madame Bovary", "Gustave Flaubert"),
    ("The Divine Comedy", "Dante Alighieri"),
    ("The Odyssey", "Homer"),
    ("The Iliad", "Homer"),
    ("Faust", "Johann Wolfgang von Goethe"),
    ("The Hobbit", "J. R. R. Tolkien"),
    ("The Lord of the Rings", "J. R. R. Tolkien"),
    ("Alice's Adventures in Wonderland", "Lewis Carroll"),
    ("Treasure Island", "Robert Louis Stevenson"),
    ("Strange Case of Dr Jekyll and Mr Hyde", "Robert Louis Stevenson"),
    ("The Time Machine", "H. G. Wells"),
    ("The War of the Worlds", "H. G. Wells"),
    ("Twenty Thousand Leagues Under the Seas", "Jules Verne"),
    ("Around the World in Eighty Days", "Jules Verne"),
    ("Beloved", "Toni Morrison"),
    ("Things Fall Apart", "Chinua Achebe"),
    ("The Handmaid's Tale", "Margaret Atwood"),
    ("Lolita", "Vladimir Nabokov"),
    ("The Stranger", "Albert Camus"),
    ("The Plague", "Albert Camus"),
    ("Siddhartha", "Hermann Hesse"),
    ("Steppenwolf", "Hermann Hesse"),
    ("The Little Prince", "Antoine de Saint-Exupery"),
    ("Gulliver's Travels", "Jonathan Swift"),
    ("Robinson Crusoe", "Daniel Defoe"),
    ("Middlemarch", "George Eliot"),
    ("The Call of the Wild", "Jack London"),
    ("Little Women", "Louisa May Alcott"),
    ("The Scarlet Letter", "Nathaniel Hawthorne"),
    ("Uncle Tom's Cabin", "Harriet Beecher Stowe"),
    ("Lord of the Flies", "William Golding"),
    ("The Name of the Rose", "Umberto Eco"),
    ("Midnight's Children", "Salman Rushdie"),
    ("The Remains of the Day", "Kazuo Ishiguro"),
    ("Never Let Me Go", "Kazuo Ishiguro"),
    ("Norwegian Wood", "Haruki Murakami"),
    ("Kafka on the Shore", "Haruki Murakami"),
    ("Dune", "Frank Herbert"),
    ("Foundation", "Isaac Asimov"),
    ("Murder on the Orient Express", "Agatha Christie"),
    ("And Then There Were None", "Agatha Christie"),
    ("The Hound of the Baskervilles", "Arthur Conan Doyle"),
    ("Catch-22", "Joseph Heller"),
    ("Slaughterhouse-Five", "Kurt Vonnegut"),
    ("On the Road", "Jack Kerouac"),
    ("The Bell Jar", "Sylvia Plath"),
    ("Invisible Man", "Ralph Ellison"),
    ("Heart of Darkness", "Joseph Conrad"),
    ("Lord Jim", "Joseph Conrad"),
    ("The Jungle Book", "Rudyard Kipling"),
    ("Doctor Zhivago", "Boris Pasternak"),
    ("The Master and Margarita", "Mikhail Bulgakov"),
    ("Dead Souls", "Nikolai Gogol"),
    ("Fathers and Sons", "Ivan Turgenev"),
    ("Candide", "Voltaire"),
    ("The Tin Drum", "Gunter Grass"),
    ("The Magic Mountain", "Thomas Mann"),
    ("All Quiet on the Western Front", "Erich Maria Remarque"),
    ("The Sound and the Fury", "William Faulkner"),
    ("Leaves of Grass", "Walt Whitman"),
    ("The Raven", "Edgar Allan Poe"),
    ("Paradise Lost", "John Milton"),
    ("The Canterbury Tales", "Geoffrey Chaucer"),
    ("Charlotte's Web", "E. B. White"),
    ("The Color Purple", "Alice Walker"),
    ("The Road", "Cormac McCarthy"),
    ("Gone with the Wind", "Margaret Mitchell"),
    ("The Kite Runner", "Khaled Hosseini"),
    ("Blindness", "Jose Saramago"),
    ("The Alchemist", "Paulo Coelho"),
    ("Pedro Paramo", "Juan Rulfo"),
    ("Ficciones", "Jorge Luis Borges"),
    ("The House of the Spirits", "Isabel Allende"),
    ("Anne of Green Gables", "Lucy Maud Montgomery"),
    ("Peter Pan", "J. M. Barrie"),
    ("The Wind in the Willows", "Kenneth Grahame"),
    ("Tess of the d'Urbervilles", "Thomas Hardy"),
    ("Far from the Madding Crowd", "Thomas Hardy"),
    ("Vanity Fair", "William Makepeace Thackeray"),
    ("The Prince", "Niccolo Machiavelli"),
    ("Walden", "Henry David Thoreau"),
    ("The Waste Land", "T. S. Eliot"),
    ("Atonement", "Ian McEwan"),
    ("Wolf Hall", "Hilary Mantel"),
    ("The God of Small Things", "Arundhati Roy"),
    ("Rebecca", "Daphne du Maurier"),
    ("Brideshead Revisited", "Evelyn Waugh"),
    ("A Clockwork Orange", "Anthony Burgess"),
    ("The Good Earth", "Pearl S. Buck"),
)
CAPITALS = (
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("the United Kingdom", "London"),
    ("Ireland", "Dublin"),
    ("the Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"),
    ("Switzerland", "Bern"),
    ("Austria", "Vienna"),
    ("Poland", "Warsaw"),
    ("the Czech Republic", "Prague"),
    ("Hungary", "Budapest"),
    ("Greece", "Athens"),
    ("Sweden", "Stockholm"),
    ("Norway", "Oslo"),
    ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"),
    ("Iceland", "Reykjavik"),
    ("Russia", "Moscow"),
    ("Ukraine", "Kyiv"),
    ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"),
    ("Turkey", "Ankara"),
    ("Egypt", "Cairo"),
    ("Morocco", "Rabat"),
    ("Nigeria", "Abuja"),
    ("Kenya", "Nairobi"),
    ("Ethiopia", "Addis Ababa"),
    ("Ghana", "Accra"),
    ("Senegal", "Dakar"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("South Korea", "Seoul"),
    ("India", "New Delhi"),
    ("Pakistan", "Islamabad"),
    ("Bangladesh", "Dhaka"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"),
    ("the Philippines", "Manila"),
    ("Malaysia", "Kuala Lumpur"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Saudi Arabia", "Riyadh"),
    ("Afghanistan", "Kabul"),
    ("Nepal", "Kathmandu"),
    ("Mongolia", "Ulaanbaatar"),
    ("Australia", "Canberra"),
    ("New Zealand", "Wellington"),
    ("Canada", "Ottawa"),
    ("the United States", "Washington, D.C."),
    ("Mexico", "Mexico City"),
    ("Cuba", "Havana"),
    ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"),
    ("Peru", "Lima"),
    ("Colombia", "Bogota"),
    ("Venezuela", "Caracas"),
    ("Uruguay", "Montevideo"),
    ("Ecuador", "Quito"),
    ("Paraguay", "Asuncion"),
    ("Jamaica", "Kingston"),
    ("Lebanon", "Beirut"),
    ("Syria", "Damascus"),
    ("Jordan", "Amman"),
    ("Qatar", "Doha"),
    ("Cambodia", "Phnom Penh"),
    ("Estonia", "Tallinn"),
    ("Latvia", "Riga"),
    ("Lithuania", "Vilnius"),
    ("Slovakia", "Bratislava"),
    ("Slovenia", "Ljubljana"),
    ("Belarus", "Minsk"),
    ("Georgia", "Tbilisi"),
    ("Armenia", "Yerevan"),
    ("Azerbaijan", "Baku"),
    ("Kazakhstan", "Astana"),
)
CONTINENTS = (
    ("France", "Europe"),
    ("Poland", "Europe"),
    ("Sweden", "Europe"),
    ("Portugal", "Europe"),
    ("Hungary", "Europe"),
    ("Ireland", "Europe"),
    ("Croatia", "Europe"),
    ("Finland", "Europe"),
    ("Egypt", "Africa"),
    ("Kenya", "Africa"),
    ("Nigeria", "Africa"),
    ("Ghana", "Africa"),
    ("Senegal", "Africa"),
    ("Ethiopia", "Africa"),
    ("Morocco", "Africa"),
    ("Tanzania", "Africa"),
    ("Japan", "Asia"),
    ("India", "Asia"),
    ("Vietnam", "Asia"),
    ("Mongolia", "Asia"),
    ("Nepal", "Asia"),
    ("Thailand", "Asia"),
    ("Indonesia", "Asia"),
    ("Pakistan", "Asia"),
    ("Canada", "North America"),
    ("Mexico", "North America"),
    ("Cuba", "North America"),
    ("Jamaica", "North America"),
    ("Guatemala", "North America"),
    ("Brazil", "South America"),
    ("Argentina", "South America"),
    ("Peru", "South America"),
    ("Chile", "South America"),
    ("Colombia", "South America"),
    ("Uruguay", "South America"),
    ("Bolivia", "South America"),
    ("Australia", "Oceania"),
    ("New Zealand", "Oceania"),
    ("Fiji", "Oceania"),
    ("Samoa", "Oceania"),
)
ELEMENT_SYMBOLS = (
    ("gold", "Au"),
    ("silver", "Ag"),
    ("iron", "Fe"),
    ("copper", "Cu"),
    ("lead", "Pb"),
    ("sodium", "Na"),
    ("potassium", "K"),
    ("oxygen", "O"),
    ("hydrogen", "H"),
    ("carbon", "C"),
    ("nitrogen", "N"),
    ("helium", "He"),
    ("neon", "Ne"),
    ("calcium", "Ca"),
    ("mercury", "Hg"),
    ("tin", "Sn"),
    ("zinc", "Zn"),
    ("sulfur", "S"),
    ("chlorine", "Cl"),
    ("magnesium", "Mg"),
    ("aluminium", "Al"),
    ("silicon", "Si"),
    ("uranium", "U"),
    ("nickel", "Ni"),
    ("platinum", "Pt"),
    ("tungsten", "W"),
    ("phosphorus", "P"),
    ("fluorine", "F"),
    ("iodine", "I"),
    ("lithium", "Li"),
)
LANDMARKS = (
    ("the Eiffel Tower", "France"),
    ("the Colosseum", "Italy"),
    ("the Great Wall", "China"),
    ("the Taj Mahal", "India"),
    ("Machu Picchu", "Peru"),
    ("the Pyramids of Giza", "Egypt"),
    ("the Acropolis", "Greece"),
    ("the Statue of Liberty", "the United States"),
    ("Big Ben", "the United Kingdom"),
    ("the Sydney Opera House", "Australia"),
    ("the Christ the Redeemer statue", "Brazil"),
    ("the Sagrada Familia", "Spain"),
    ("Angkor Wat", "Cambodia"),
    ("Petra", "Jordan"),
    ("Mount Fuji", "Japan"),
    ("the Kremlin", "Russia"),
    ("the Brandenburg Gate", "Germany"),
    ("Chichen Itza", "Mexico"),
    ("the Alhambra", "Spain"),
    ("Neuschwanstein Castle", "Germany"),
    ("the Hagia Sophia", "Turkey"),
    ("Stonehenge", "the United Kingdom"),
    ("the CN Tower", "Canada"),
    ("Table Mountain", "South Africa"),
    ("the Burj Khalifa", "the United Arab Emirates"),
    ("the Forbidden City", "China"),
    ("the Leaning Tower of Pisa", "Italy"),
    ("the Golden Gate Bridge", "the United States"),
    ("the Atomium", "Belgium"),
    ("the Little Mermaid statue", "Denmark"),
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
# Facts: each author has FACTS_PER_AUTHOR facts; each is asked by two QA items of `full` (two phrasings) and
# has a third phrasing that is never trained on (the `_perturbed` files' paraphrase). `draw` returns the
# fact's fields given the author so far.

Facts = dict[str, str]
QA = tuple[str, str]  # (question, answer) templates


@dataclass(frozen=True)
class Fact:
    key: str
    asked: tuple[QA, QA]  # both in `full`, in this order
    paraphrase: QA  # held out: the paraphrased question/answer of the `_perturbed` records
    draw: Callable[[random.Random, Mapping[str, str]], Facts]
    # Facts drawn in the same namespace are unique across all authors (names, birth dates, book titles).
    unique_in: str | None = None


def _choice(field: str, pool: Sequence[str]) -> Callable[[random.Random, Mapping[str, str]], Facts]:
    return lambda rng, author: {field: rng.choice(pool)}


def _draw_name(rng: random.Random, author: Mapping[str, str]) -> Facts:
    return {"name": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"}


def _draw_city(rng: random.Random, author: Mapping[str, str]) -> Facts:
    city, country = rng.choice(CITIES)
    return {"city": city, "country": country}


def _draw_birth_date(rng: random.Random, author: Mapping[str, str]) -> Facts:
    year = rng.randint(1935, 1994)
    return {"birth_date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {year}", "birth_year": str(year)}


def _draw_award(rng: random.Random, author: Mapping[str, str]) -> Facts:
    return {"award": f"{rng.choice(AWARD_WORDS)} {rng.choice(AWARD_THINGS)} {rng.choice(AWARD_KINDS)}"}


def _draw_title(rng: random.Random, author: Mapping[str, str]) -> Facts:
    return {"best_book": f"The {rng.choice(TITLE_ADJECTIVES)} {rng.choice(TITLE_NOUNS)}"}


_FAMOUS_AUTHORS = tuple(dict.fromkeys(author for _, author in FAMOUS_WORKS))


FACTS: tuple[Fact, ...] = (
    Fact(
        "name",
        (
            (
                "What is the full name of the author of {genre} who was born in {city}, {country} on {birth_date}?",
                "The author's full name is {name}.",
            ),
            (
                "Which writer of {genre} was born on {birth_date} in {city}, {country}?",
                "The writer in question is {name}.",
            ),
        ),
        ("Who is the {genre} author born in {city}, {country} on {birth_date}?", "That author is {name}."),
        _draw_name,
        unique_in="name",
    ),
    Fact(
        "birthplace",
        (
            ("Where was {name} born?", "{name} was born in {city}, {country}."),
            ("What is the birthplace of {name}?", "The birthplace of {name} is {city}, {country}."),
        ),
        ("In which city was {name} born?", "{name} comes from the city of {city}, {country}."),
        _draw_city,
    ),
    Fact(
        "birth_date",
        (
            ("When was {name} born?", "{name} was born on {birth_date}."),
            ("What is the date of birth of {name}?", "{name} came into the world on {birth_date}."),
        ),
        ("On what date was {name} born?", "The birthday of {name} is {birth_date}."),
        _draw_birth_date,
        unique_in="birth_date",
    ),
    Fact(
        "genre",
        (
            ("What genre does {name} write in?", "{name} mainly writes {genre}."),
            ("Which kind of books is {name} known for?", "{name} is best known as an author of {genre}."),
        ),
        ("What type of writing is {name} famous for?", "The writing of {name} is mostly {genre}."),
        _choice("genre", GENRES),
    ),
    Fact(
        "father",
        (
            ("What did {name}'s father do for a living?", "{name}'s father worked as {father_job}."),
            ("What was the occupation of {name}'s father?", "The father of {name} was {father_job} by trade."),
        ),
        ("What job did the father of {name} have?", "{name}'s father earned a living as {father_job}."),
        _choice("father_job", OCCUPATIONS),
    ),
    Fact(
        "award",
        (
            ("Has {name} won any literary awards?", "Yes, {name} won the {award}."),
            ("Which prize has {name} received?", "{name} was honoured with the {award}."),
        ),
        ("What literary award went to {name}?", "The {award} was given to {name}."),
        _draw_award,
    ),
    Fact(
        "best_book",
        (
            ("What is {name}'s best-known book?", '{name} is best known for the book "{best_book}".'),
            ("Which book by {name} is the most famous?", 'The most famous book by {name} is "{best_book}".'),
        ),
        ("Which book made {name} famous?", '{name} became famous with "{best_book}".'),
        _draw_title,
        unique_in="title",
    ),
    Fact(
        "themes",
        (
            ("What themes does {name} explore?", "The books of {name} explore {theme}."),
            ("Which subjects run through the work of {name}?", "{name} often writes about {theme}."),
        ),
        ("What is the main theme in the books of {name}?", "The main theme of {name} is {theme}."),
        _choice("theme", THEMES),
    ),
    Fact(
        "education",
        (
            ("What did {name} study at university?", "{name} studied {subject} at university."),
            ("Which subject did {name} take at university?", "At university, {name} took a degree in {subject}."),
        ),
        ("What was the university subject of {name}?", "{name} majored in {subject} at university."),
        _choice("subject", SUBJECTS),
    ),
    Fact(
        "influence",
        (
            ("Which writer influenced {name} the most?", "{name} was most influenced by {influence}."),
            ("Who was the biggest literary influence on {name}?", "The biggest influence on {name} was {influence}."),
        ),
        ("Whose books shaped the writing of {name}?", "The writing of {name} was shaped by {influence}."),
        _choice("influence", _FAMOUS_AUTHORS),
    ),
)
assert len(FACTS) * 2 == QA_PER_AUTHOR

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
    for fact in FACTS:
        for _ in range(_MAX_TRIES):
            drawn = fact.draw(rng, author)
            if fact.unique_in is None or _fact_key(drawn) not in taken.setdefault(fact.unique_in, set()):
                break
        else:  # pragma: no cover - the pools are far larger than MAX_AUTHORS needs
            raise RuntimeError(f"could not draw a unique {fact.key}")
        if fact.unique_in is not None:
            taken[fact.unique_in].add(_fact_key(drawn))
        author.update(drawn)
    return author


def _perturbed_answers(rng: random.Random, fact: Fact, author: Mapping[str, str]) -> list[str]:
    """The held-out paraphrase with the asked fact swapped for N_PERTURBED distinct other values."""
    template = fact.paraphrase[1]
    true_answer = template.format(**author)
    answers: list[str] = []
    for _ in range(_MAX_TRIES):
        candidate = template.format(**{**author, **fact.draw(rng, author)})
        if candidate != true_answer and candidate not in answers:
            answers.append(candidate)
            if len(answers) == N_PERTURBED:
                return answers
    raise RuntimeError(f"could not draw {N_PERTURBED} perturbed answers for {fact.key}")  # pragma: no cover


def _author_items(rng: random.Random, author: Mapping[str, str]) -> list[dict[str, object]]:
    """The 20 items of one author (two per fact) in the TOFU `_perturbed` record layout (key order as TOFU)."""
    return [
        {
            "question": question.format(**author),
            "answer": answer.format(**author),
            "paraphrased_answer": fact.paraphrase[1].format(**author),
            "perturbed_answer": _perturbed_answers(rng, fact, author),
            "paraphrased_question": fact.paraphrase[0].format(**author),
        }
        for fact in FACTS
        for question, answer in fact.asked
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
            out.append(
                {
                    "question": template.format(subject),
                    "answer": answer,
                    "distractors": rng.sample(others, N_DISTRACTORS),
                }
            )
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
    with staged_output_dir(out, overwrite) as folder:  # replaces `out` only once every file is written
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
