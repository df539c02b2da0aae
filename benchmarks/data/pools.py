"""Value pools the generators draw arguments from: invented names, places, products and identifiers.

Real city names and common first names appear; every product, company, venue and title is invented here.
"""

from __future__ import annotations

FIRST_NAMES = (
    "Ana", "Bilal", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kemi", "Lars",
    "Maya", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yusuf", "Zoe",
)
LAST_NAMES = (
    "Abara", "Berg", "Castell", "Dorn", "Eklund", "Ferreira", "Gallo", "Haddad", "Ivanova", "Jansen", "Kowal",
    "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov", "Quinn", "Rahman", "Sato", "Tanaka", "Varga", "Weber",
)
CITIES = (
    "Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Porto", "Krakow", "Quito", "Tallinn", "Dakar", "Hanoi",
    "Bergen", "Cork", "Valencia", "Tbilisi", "Leeds", "Graz", "Montreal", "Perth", "Recife", "Seville", "Turin",
)
STREETS = ("Elm Street", "Harbour Road", "Mill Lane", "Station Square", "Rosemary Way", "King's Walk",
           "Canal Street", "Orchard Close", "Pine Avenue", "Quarry Hill")
COLORS = ("red", "blue", "green", "black", "white", "orange", "purple", "teal", "grey", "yellow")
LANGUAGES = ("English", "Spanish", "French", "German", "Portuguese", "Japanese", "Swahili", "Polish", "Turkish")
PRODUCTS = (
    "Aurora desk lamp", "Basalt water bottle", "Cirrus headphones", "Delta hiking boots", "Ember kettle",
    "Fjord rain jacket", "Granite chopping board", "Halcyon pillow", "Iris sunglasses", "Juniper candle",
    "Kestrel backpack", "Lumen bike light", "Moss yoga mat", "Nimbus umbrella", "Onyx phone case",
)
RESTAURANTS = ("Casa Verde", "The Salt Cellar", "Noodle Harbour", "Blue Fig", "Olive and Ash", "Kiln House",
               "Little Saffron", "The Copper Pot", "Marigold Diner", "Tidewater Grill")
TEAMS = ("Falcons", "River Otters", "Iron Bees", "Night Owls", "Red Comets", "Harbour Hawks", "Storm Petrels")
PROJECTS = ("Apollo", "Bluebird", "Cobalt", "Driftwood", "Evergreen", "Foxglove", "Gemini", "Horizon", "Lantern")
FILES = ("notes.txt", "budget.xlsx", "report.pdf", "todo.md", "photo_042.jpg", "draft_v2.docx", "data.csv",
         "slides.pptx", "invoice_17.pdf", "backup.zip")
SONGS = ("Paper Lanterns", "Slow River", "Copper Moon", "Neon Orchard", "Midnight Ferry", "Glass Garden",
         "Northern Static", "Velvet Signal", "Summer Engine", "Hollow Pines")
ARTISTS = ("The Quiet Kites", "Mara Solis", "Echo Parade", "Juno Vance", "Lowland Choir", "Orbit Seven")
BOOKS = ("The Ninth Lighthouse", "A Map of Small Rivers", "Winter in Harrow", "The Glass Cartographer",
         "Letters from Nowhere", "The Clockmaker's Garden", "Salt and Starlight", "Under the Iron Bridge")
TOPICS = ("budget review", "sprint planning", "design critique", "quarterly goals", "onboarding", "vendor call",
          "retrospective", "hiring sync", "roadmap", "security audit")
PLANTS = ("basil", "fern", "monstera", "orchid", "tomato plant", "cactus", "lavender", "bonsai", "snake plant")
PETS = ("Biscuit", "Pepper", "Mochi", "Luna", "Ziggy", "Nala", "Otis", "Waffles")
ROOMS = ("kitchen", "living room", "bedroom", "office", "hallway", "garage", "bathroom", "porch")
DEVICES = ("thermostat", "ceiling light", "floor lamp", "air purifier", "speaker", "heater", "fan")
AIRPORTS = ("LIS", "OSL", "NBO", "LIM", "KIX", "OPO", "KRK", "UIO", "TLL", "DSS", "HAN", "BGO", "ORK", "VLC")
INGREDIENTS = ("chickpeas", "spinach", "lentils", "mushrooms", "tofu", "salmon", "rice", "eggs", "feta", "leeks",
               "quinoa", "kale")
SKILLS = ("Python", "welding", "bookkeeping", "photography", "carpentry", "first aid", "Excel", "pottery")
STOCKS = ("ACRN", "BLMX", "CDRV", "DYNQ", "ELKO", "FRZN", "GLTX", "HVRD")
