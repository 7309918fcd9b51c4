"""The word banks of the synthetic personas (data/personas.py): which cues, templates and
topics the generators draw from, per LaMP task. Data only: changing a bank changes every
persona written with it (the personas are byte-stable per seed, tests/test_personas.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TAG_CUES: dict[str, tuple[str, ...]] = {
    "sci-fi": ("a starship crew answers a distress signal", "an engineer builds a machine that bends time",
               "colonists land on a distant ocean planet", "a probe returns with an alien signal",
               "an android wakes up aboard an empty space station", "astronauts race to repair a failing reactor"),
    "based on a book": ("adapted from the bestselling novel", "faithful to the beloved book it comes from",
                        "the author's famous novel comes to the screen", "taken chapter by chapter from the novel",
                        "the prize-winning memoir is brought to life", "the classic children's book gets a film"),
    "comedy": ("two hopeless roommates stumble into hilarious misadventures", "a wedding goes wrong in every funny way",
               "a clumsy waiter becomes an accidental celebrity", "a family road trip turns into a comic disaster",
               "a lazy substitute teacher fakes his way through term", "rival neighbours escalate a silly prank war"),
    "action": ("a retired agent fights through a city in one night", "car chases and explosions follow a stolen case",
               "a bodyguard battles mercenaries on a speeding train", "a soldier storms a fortress alone",
               "a getaway driver outruns the whole police force", "a firefighter scales a burning skyscraper"),
    "twist ending": ("nothing is what it seems until the final scene", "the last minute reveals who was lying all along",
                     "a final revelation turns the whole story upside down", "the ending changes everything you saw",
                     "the narrator hides one secret until the credits", "a last-second reveal rewrites every clue"),
    "dystopia": ("in a future where the state watches every citizen", "under a regime that bans all books",
                 "in a collapsed society ruled by a single corporation", "where citizens are ranked by obedience",
                 "in a walled city where memories are rationed", "after the government outlaws private thought"),
    "dark comedy": ("a funeral becomes a grimly funny family feud", "two hitmen bicker about manners between jobs",
                    "a cheerful salesman hides a body with awkward jokes", "a petty crime spirals into morbid farce",
                    "a retirement home plots a hilariously deadly heist", "an undertaker's cheerful cover-up goes awry"),
    "classic": ("a timeless black-and-white tale of honour", "an old Hollywood story that defined a generation",
                "a celebrated film from the golden age of cinema", "a masterpiece restored from the studio era",
                "a silent-era gem with a legendary score", "a much-quoted drama from the fifties"),
    "psychology": ("a therapist uncovers her patient's buried memories", "a man's obsession slowly unravels his mind",
                   "a study of guilt inside a troubled detective", "a woman questions her own sanity",
                   "a patient's recurring dream hides a trauma", "twins swap lives and lose track of themselves"),
    "fantasy": ("a young wizard searches for a lost dragon", "an enchanted forest hides a cursed kingdom",
                "elves and dwarves unite against a dark sorcerer", "a girl finds a door into a magical realm",
                "a knight bargains with a river spirit", "a talking fox guides a prince through a spell"),
    "romance": ("two strangers fall in love over one summer", "old sweethearts meet again after twenty years",
                "a letter sparks a love affair across the sea", "a chef and a critic slowly fall for each other",
                "a wedding planner falls for the groom's brother", "pen pals finally meet in Paris"),
    "thought-provoking": ("a quiet story that asks what makes us human", "a film that questions the meaning of choice",
                          "a meditation on memory and identity", "it leaves you thinking about free will for days",
                          "a slow puzzle about what we owe strangers", "a calm look at how people decide what is true"),
    "social commentary": ("a sharp look at inequality in a modern city", "a satire of wealth and class privilege",
                          "an honest portrait of racism in a small town", "a critique of media and consumer culture",
                          "a factory strike exposes who really holds power", "a biting take on celebrity charity"),
    "violence": ("a brutal gang war leaves the streets in blood", "a revenge spree of graphic bloodshed",
                 "a savage massacre in a remote village", "merciless fights in an underground arena",
                 "a cartel enforcer leaves a trail of bodies", "a prison riot turns into a bloodbath"),
    "true story": ("based on the real events of a 1970s rescue", "the true account of a whistleblower",
                   "inspired by the real life of a famous athlete", "the real story of a wartime codebreaker",
                   "the documented fight of a small-town lawyer", "recounts the true voyage of a lost fishing crew"),
}
# Global popularity of the tags (a long tail, as in MovieLens-derived LaMP-2).
TAG_POPULARITY: dict[str, float] = {
    "comedy": 14, "action": 11, "romance": 10, "sci-fi": 9, "classic": 8, "based on a book": 8, "twist ending": 6,
    "thought-provoking": 6, "dark comedy": 5, "fantasy": 5, "violence": 5, "psychology": 4, "social commentary": 4,
    "dystopia": 3, "true story": 2,
}
WHO = ("a young woman", "an aging detective", "a shy teenager", "a single father", "a stubborn farmer",
       "a gifted student", "a weary nurse", "a small-town mayor", "a retired boxer", "a restless painter")
DESCRIPTION_FRAMES: tuple[str, ...] = (
    "{Who}: {a}; {b}.",
    "{A}, and {b}.",
    "The story of {who}. {A}; {b}.",
    "{A}. {B}, as {who} soon learns.",
    "{A} while {b}.",
    "Follow {who} as {a}. Meanwhile, {b}.",
)
SENTIMENT: dict[int, tuple[str, ...]] = {
    1: ("it broke on the second day and support never answered", "it is completely useless and a waste of money",
        "it arrived broken and smelled of burnt plastic", "nothing about it works as advertised"),
    2: ("it stopped working properly after a few weeks", "the quality is disappointing for the price",
        "it feels flimsy and the instructions are confusing", "it arrived scratched and does the job poorly"),
    3: ("it is okay, nothing special but it works", "decent product with a few annoying flaws",
        "it does what it says, though it could be better", "average quality, fine for occasional use"),
    4: ("it works well and feels solid", "good value, I am happy with this purchase",
        "nice design and it does the job reliably", "it performs better than I expected"),
    5: ("it is excellent and I would buy it again tomorrow", "absolutely love it, the best I have owned",
        "flawless from day one and beautifully made", "it exceeded every expectation I had"),
}
SENTIMENT_LEVEL_WEIGHTS = {1: 0.08, 2: 0.10, 3: 0.17, 4: 0.30, 5: 0.35}  # Amazon reviews lean positive
PRODUCT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "kitchen": ("blender", "coffee grinder", "toaster", "rice cooker", "electric kettle", "cutting board"),
    "electronics": ("headphones", "keyboard", "wireless mouse", "phone case", "camera strap", "desk lamp"),
    "outdoor": ("backpack", "hiking boots", "water bottle", "tent", "bike light", "umbrella"),
    "home": ("office chair", "yoga mat", "bath towel", "storage box", "pillow", "curtains"),
}
REVIEW_OPENERS = ("I bought the {p} last month: {s}.", "Got the {p} as a gift. In short, {s}.",
                  "After two weeks with the {p}, my verdict: {s}.", "Ordered the {p} online. Honestly, {s}.",
                  "Replaced my old {p} with this one: {s}.", "My second {p} from this brand. Well, {s}.")
REVIEW_FILLERS = ("Shipping took about a week.", "I use it almost every day.", "It came in plain packaging.",
                  "My partner picked the colour.", "The box was a bit dented.", "I compared three models first.")
RATING_BIAS = {"harsh": -1.0, "neutral": 0.0, "generous": 1.0}
RESEARCH: dict[str, dict[str, tuple[str, ...]]] = {
    "graph learning": {"method": ("graph neural networks", "message passing", "graph attention", "graph transformers"),
                       "problem": ("node classification", "link prediction", "molecular property prediction",
                                   "community detection"),
                       "dataset": ("OGB", "Cora", "ZINC")},
    "speech": {"method": ("self-supervised speech encoders", "CTC decoding", "conformer models", "neural vocoders"),
               "problem": ("speech recognition", "speaker verification", "keyword spotting", "speech synthesis"),
               "dataset": ("LibriSpeech", "VoxCeleb", "Common Voice")},
    "robotics": {"method": ("model predictive control", "imitation learning", "tactile sensing", "sim-to-real transfer"),
                 "problem": ("robot grasping", "legged locomotion", "mobile manipulation", "dexterous manipulation"),
                 "dataset": ("RoboSuite", "real robot trials", "MuJoCo benchmarks")},
    "databases": {"method": ("learned indexes", "query optimization", "columnar storage", "adaptive caching"),
                  "problem": ("join processing", "transaction throughput", "analytical queries", "data cleaning"),
                  "dataset": ("TPC-H", "TPC-DS", "JOB")},
    "vision": {"method": ("vision transformers", "contrastive pretraining", "diffusion models", "neural radiance fields"),
               "problem": ("image segmentation", "object detection", "image generation", "3D reconstruction"),
               "dataset": ("ImageNet", "COCO", "ADE20K")},
    "security": {"method": ("fuzzing", "static analysis", "formal verification", "symbolic execution"),
                 "problem": ("memory safety bugs", "malware detection", "protocol vulnerabilities", "side channels"),
                 "dataset": ("real-world firmware", "the Linux kernel", "open-source libraries")},
    "privacy": {"method": ("differential privacy", "secure aggregation", "federated learning", "synthetic data"),
                "problem": ("private data release", "membership inference", "private model training",
                            "census statistics"),
                "dataset": ("census records", "medical records", "mobile keyboards")},
    "networks": {"method": ("congestion control", "programmable switches", "traffic engineering", "in-network caching"),
                 "problem": ("datacenter latency", "video streaming", "network telemetry", "wide-area routing"),
                 "dataset": ("production traces", "a campus network", "a global CDN")},
    "language": {"method": ("retrieval-augmented generation", "instruction tuning", "low-rank adapters",
                            "contrastive decoding"),
                 "problem": ("question answering", "machine translation", "text summarization",
                             "personalized generation"),
                 "dataset": ("SQuAD", "WMT", "LaMP")},
    "recommender systems": {"method": ("matrix factorization", "sequential transformers", "two-tower retrieval",
                                       "bandit exploration"),
                            "problem": ("next-item recommendation", "cold-start users", "click-through prediction",
                                        "fair ranking"),
                            "dataset": ("MovieLens", "Amazon reviews", "news logs")},
}
GENERIC_TITLES = ("Lessons from a Decade of Practical Research", "A Unified View of Recent Advances",
                  "Revisiting Common Assumptions in Our Field", "Toward More Reliable Systems in Practice",
                  "Open Problems and Future Directions", "What Works and What Does Not: An Empirical Look",
                  "A Retrospective on Methods and Benchmarks", "Bridging Theory and Practice")
ADJ = ("scalable", "robust", "efficient", "adaptive", "lightweight", "principled", "practical", "fast",
       "accurate", "interpretable")
CHALLENGES = ("labelled data is scarce", "inputs are noisy", "compute budgets are tight",
              "distributions shift over time", "scale grows to millions of items", "latency must stay low")
MECHANISMS = ("learns compact representations", "adapts to each input", "reuses intermediate results",
              "combines local and global context", "exploits structure in the data", "needs no extra supervision")
RESULTS = ("consistent gains over strong baselines", "a twofold speedup at equal accuracy",
           "state-of-the-art results with fewer parameters", "large improvements in the low-data regime")
NAME_SUFFIXES = ("Net", "Former", "X", "++", "Lite", "Flow")
PROPERTIES = ("limits", "robustness", "efficiency", "role")
# beat -> events as (subject in the article, subject in a headline, past, present, base verb, object),
# plus the beat's kicker words and the people a story affects.
NEWS_BEATS: dict[str, dict[str, tuple[Any, ...]]] = {
    "city": {"events": (("the city council", "council", "approved", "approves", "approve", "a new budget for public transit"),
                        ("the mayor", "mayor", "unveiled", "unveils", "unveil", "a plan to plant ten thousand trees"),
                        ("the city council", "council", "delayed", "delays", "delay", "the vote on the new stadium"),
                        ("the transit authority", "transit agency", "cut", "cuts", "cut", "bus fares for students")),
             "kicker": ("City Hall", "Local"), "affected": ("residents", "commuters")},
    "sports": {"events": (("the national team", "national team", "won", "wins", "win", "the championship final in extra time"),
                          ("the football club", "club", "signed", "signs", "sign", "a young goalkeeper for a record fee"),
                          ("the football club", "club", "lost", "loses", "lose", "the derby after a late penalty"),
                          ("the national team", "national team", "named", "names", "name", "a new head coach")),
               "kicker": ("Sports", "Game day"), "affected": ("fans", "season ticket holders")},
    "business": {"events": (("a tech giant", "tech giant", "announced", "announces", "announce", "layoffs in its hardware division"),
                            ("a local startup", "startup", "raised", "raises", "raise", "new funding for its delivery robots"),
                            ("the central bank", "central bank", "kept", "keeps", "keep", "interest rates unchanged despite rising prices"),
                            ("a carmaker", "carmaker", "opened", "opens", "open", "a battery factory near the river")),
                 "kicker": ("Markets", "Business"), "affected": ("workers", "borrowers")},
    "weather": {"events": (("the weather service", "forecasters", "warned", "warn", "warn", "of heavy storms across the coast"),
                           ("emergency officials", "officials", "issued", "issue", "issue", "a heat advisory for the whole region"),
                           ("emergency officials", "officials", "lifted", "lift", "lift", "the flood warning for the valley")),
                "kicker": ("Weather", "Storm watch"), "affected": ("drivers", "farmers")},
    "health": {"events": (("the health ministry", "health ministry", "launched", "launches", "launch", "a free vaccination campaign for children"),
                          ("doctors at the city hospital", "doctors", "reported", "report", "report", "a sharp drop in flu cases"),
                          ("the city hospital", "hospital", "opened", "opens", "open", "a new cancer treatment wing")),
               "kicker": ("Health", "Your health"), "affected": ("parents", "patients")},
    "culture": {"events": (("the museum", "museum", "reopened", "reopens", "reopen", "its ancient history wing after renovation"),
                           ("the zoo", "zoo", "welcomed", "welcomes", "welcome", "two panda cubs born in the spring"),
                           ("the city orchestra", "orchestra", "cancelled", "cancels", "cancel", "its summer concert series")),
                "kicker": ("Culture", "Arts"), "affected": ("visitors", "families")},
    "crime": {"events": (("the police", "police", "arrested", "arrest", "arrest", "three suspects after a jewellery store robbery"),
                         ("prosecutors", "prosecutors", "charged", "charge", "charge", "a former official with fraud"),
                         ("a federal judge", "judge", "blocked", "blocks", "block", "the sale of the old prison site")),
              "kicker": ("Crime", "Courts"), "affected": ("shop owners", "taxpayers")},
    "politics": {"events": (("the parliament", "parliament", "passed", "passes", "pass", "a law protecting online privacy"),
                            ("the prime minister", "prime minister", "rejected", "rejects", "reject", "the proposed fuel tax"),
                            ("opposition leaders", "opposition", "promised", "promise", "promise", "a review of pension rules")),
                 "kicker": ("Politics", "Analysis"), "affected": ("voters", "pensioners")},
}
PLACES = ("Springfield", "Riverton", "Lakeside", "Oakville", "Northport", "Greenfield", "Bayview", "Hillcrest")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
REASONS = ("a long debate", "months of pressure", "a surprise report", "public protests", "a close vote",
           "weeks of talks")
NEWS_DETAILS = ("Officials said more details would follow next week.", "Residents reacted with mixed feelings.",
                "Critics called the move overdue.", "Supporters praised the speed of the decision.",
                "The full report runs to {n} pages.", "About {n} people attended the announcement.")
TWEET_ACTIVITIES = ("just finished a long run in the park", "the coffee at the new place downtown is great",
                    "cannot believe how fast this week went", "watching the game with friends tonight",
                    "my cat knocked over the plant again", "finally fixed the bug that took all day",
                    "rainy sunday perfect for reading", "made pancakes for the whole family",
                    "the train is late again this morning", "new album from my favourite band is out",
                    "spent the afternoon in the garden", "trying a new recipe for dinner",
                    "the sunset over the lake was unreal", "first day at the new job went well",
                    "stuck in traffic for an hour", "my kid learned to ride a bike today",
                    "the library was so quiet this morning", "booked tickets for the summer trip",
                    "the gym was packed at six am", "my sourdough finally rose properly",
                    "cleaned the whole flat before the guests came", "found a great used bookshop",
                    "the dog refused to walk in the snow", "our team shipped the release on time")
TWEET_TAILS = ("", "", "", " today", " and it made my day", " again", " for real")
INTERJECTIONS = ("lol", "omg", "ngl", "tbh", "honestly", "wow", "yay", "smh", "haha")
HASHTAGS = ("#blessed", "#goodvibes", "#mondaymotivation", "#weekend", "#foodie", "#running", "#booklover",
            "#coding", "#family", "#travel", "#nofilter", "#grateful")
FRIENDS = ("@sam", "@alex_k", "@mia", "@jordan", "@theo", "@priya", "@lee", "@nina")
EMOJI = ("😂", "😍", "🙌", "🔥", "😭", "☕", "✨", "👍", "🎉", "🙃")
ENDINGS = ("", ".", "!", "!!", "!!!", "...", " :)")
TITLE_PATTERNS: dict[str, Callable[[dict[str, str]], str]] = {
    "name-colon": lambda f: f"{f['name']}: {f['adj']} {f['problem']} with {f['method']}",
    "towards": lambda f: f"towards {f['adj']} {f['problem']} with {f['method']}",
    "via": lambda f: f"{f['adj']} {f['problem']} via {f['method']}",
    "on-the": lambda f: f"on the {f['property']} of {f['method']} for {f['problem']}",
    "question": lambda f: f"can {f['method']} solve {f['problem']}?",
    "rethinking": lambda f: f"rethinking {f['method']} for {f['problem']}",
    "plain": lambda f: f"{f['method']} for {f['problem']}",
}
HEADLINE_PATTERNS: dict[str, Callable[[dict[str, str]], str]] = {
    "plain": lambda f: f"{f['S']} {f['V']} {f['O']}",
    "place-colon": lambda f: f"{f['P']}: {f['S']} {f['V']} {f['O']}",
    "question": lambda f: f"will {f['S']} {f['B']} {f['O']}?",
    "after": lambda f: f"{f['S']} {f['V']} {f['O']}" + ("" if " after " in f["O"] else f" after {f['R']}"),
    "kicker": lambda f: f"{f['K']}: {f['S']} {f['V']} {f['O']}",
    "what-it-means": lambda f: f"{f['S']} {f['V']} {f['O']}: what it means for {f['A']}",
}
