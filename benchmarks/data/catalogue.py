"""The invented functions, by domain. Training uses TRAIN_DOMAINS; the held-out test uses HELD_OUT_DOMAINS,
whose functions (names, schemas, descriptions and domains) never appear in training.

Parameter types covered on both sides: strings, integers, numbers, enums, booleans, optional parameters,
lists and nested objects.
"""

from __future__ import annotations

from benchmarks.data import pools as P
from benchmarks.data.params import (
    Function,
    choice,
    clock,
    code,
    date,
    email,
    flag,
    integer,
    items,
    made_up,
    number,
    person,
    record,
    text,
)

F = Function
UNITS = choice("unit", "temperature unit", ("celsius", "fahrenheit"), "in {}", False,
               {"celsius": "Celsius", "fahrenheit": "Fahrenheit"})

WEATHER = (
    F("get_forecast", "Weather forecast for a city.", "weather",
      (text("city", "city name", P.CITIES), integer("days", "days ahead", 1, 7, "for the next {} days", False), UNITS),
      ("What's the weather forecast for {city}?", "get me the forecast for {city}", "will it rain in {city}?")),
    F("get_air_quality", "Current air quality index of a city.", "weather",
      (text("city", "city name", P.CITIES),),
      ("How is the air quality in {city} right now?", "check the air quality index for {city}")),
)
DINING = (
    F("book_table", "Reserve a table at a restaurant.", "dining",
      (text("restaurant", "restaurant name", P.RESTAURANTS), integer("party_size", "number of guests", 1, 12),
       made_up("time", "HH:MM, 24-hour", clock), flag("outdoor", "terrace seating", "on the terrace", "indoors")),
      ("book a table at {restaurant} for {party_size} people at {time}",
       "reserve {restaurant} at {time} for a party of {party_size}")),
    F("find_restaurants", "Search restaurants in a city by cuisine.", "dining",
      (text("city", "", P.CITIES), choice("cuisine", "kind of food", ("thai", "italian", "mexican", "vegan",
                                                                           "japanese")),
       choice("price", "price level", ("cheap", "moderate", "expensive"), "that are {}", False)),
      ("find {cuisine} restaurants in {city}", "Where can I eat {cuisine} food in {city}?")),
)
TRAVEL = (
    F("search_flights", "Find flights between two airports on a date.", "travel",
      (text("origin", "IATA code", P.AIRPORTS), text("destination", "IATA code", P.AIRPORTS),
       made_up("date", "YYYY-MM-DD", date), choice("cabin", "cabin class", ("economy", "business"), "in {} class",
                                                   False)),
      ("search flights from {origin} to {destination} on {date}",
       "Are there flights {origin} to {destination} on {date}?")),
    F("book_hotel", "Book a hotel room for a guest.", "travel",
      (record("guest", "who stays", (made_up("name", "full name", person), made_up("email", "address", email)),
              "{name} ({email})"),
       text("city", "", P.CITIES), integer("nights", "how many nights", 1, 14),
       flag("breakfast", "breakfast included", "with breakfast", "without breakfast")),
      ("book a hotel in {city} for {nights} nights for {guest}", "reserve {nights} nights in {city} for {guest}")),
    F("convert_currency", "Convert an amount between currencies.", "travel",
      (number("amount", "amount to convert", 5, 900), choice("source", "ISO code", ("EUR", "USD", "GBP", "JPY")),
       choice("target", "ISO code", ("CHF", "SEK", "CAD", "AUD"))),
      ("convert {amount} {source} to {target}", "How much is {amount} {source} in {target}?")),
)
SHOPPING = (
    F("add_to_cart", "Add a product to the shopping cart.", "shopping",
      (text("product", "product name", P.PRODUCTS), integer("quantity", "how many", 1, 9),
       choice("color", "", P.COLORS, "in {}", False), flag("gift_wrap", "wrap as a gift", "gift wrapped",
                                                                "without gift wrapping")),
      ("add {quantity} {product} to my cart", "put {quantity} of the {product} in the cart")),
    F("track_order", "Where an order is.", "shopping",
      (made_up("order_id", "order number", code("ORD")),),
      ("Where is my order {order_id}?", "track order {order_id}")),
    F("return_item", "Start a return for an order.", "shopping",
      (made_up("order_id", "order number", code("ORD")),
       choice("reason", "why", ("damaged", "wrong size", "not as described", "changed mind"))),
      ("return order {order_id}, reason: {reason}", "I want to send back {order_id}, the reason is {reason}.")),
)
CALENDAR = (
    F("create_event", "Add an event to the calendar.", "calendar",
      (text("title", "event title", P.TOPICS), made_up("date", "YYYY-MM-DD", date), made_up("start", "HH:MM", clock),
       integer("duration_min", "minutes", 15, 120, "lasting {} minutes", False)),
      ("schedule a {title} on {date} at {start}", "put {title} in my calendar for {date} at {start}")),
    F("list_events", "Events on a given day.", "calendar",
      (made_up("date", "YYYY-MM-DD", date),),
      ("What's on my calendar on {date}?", "list my events for {date}")),
)
MESSAGING = (
    F("send_email", "Send an email.", "messaging",
      (made_up("to", "recipient address", email), text("subject", "subject line", P.TOPICS),
       flag("urgent", "mark as urgent", "and mark it urgent", "as a normal-priority mail")),
      ("email {to} with the subject {subject}", "send a mail to {to}, subject: {subject}")),
    F("send_sms", "Send a text message to a contact.", "messaging",
      (made_up("contact", "contact name", person), text("text", "message body", ("running late", "call me back",
                                                                                "see you soon", "on my way"))),
      ("text {contact} saying {text}", "send {contact} an SMS: {text}")),
)
MUSIC = (
    F("play_song", "Play a song.", "music",
      (text("title", "song title", P.SONGS), text("artist", "", P.ARTISTS, "by {}", False),
       flag("shuffle", "shuffle after it", "then shuffle", "without shuffle")),
      ("play {title}", "put on the song {title}")),
    F("create_playlist", "Create a playlist from songs.", "music",
      (text("name", "playlist name", ("Road Trip", "Focus", "Sunday", "Gym", "Rainy Day")),
       items("songs", "song titles", P.SONGS)),
      ("make a playlist called {name} with {songs}", "create the playlist {name} containing {songs}")),
)
HOME = (
    F("set_thermostat", "Set a room's target temperature.", "home",
      (text("room", "", P.ROOMS), number("temperature", "degrees", 16, 26), UNITS),
      ("set the {room} to {temperature} degrees", "make the {room} {temperature} degrees")),
    F("toggle_device", "Switch a device on or off.", "home",
      (text("device", "", P.DEVICES), choice("state", "on or off", ("on", "off")),
       text("room", "", P.ROOMS, "in the {}", False)),
      ("turn {state} the {device}", "switch the {device} {state}")),
)
FILES = (
    F("share_file", "Share a file with someone.", "files",
      (text("path", "file name", P.FILES), made_up("with_email", "who gets access", email),
       choice("access", "permission", ("view", "comment", "edit"), "with {} access", False)),
      ("share {path} with {with_email}", "give {with_email} access to {path}")),
    F("compress_files", "Zip files into an archive.", "files",
      (items("paths", "files to add", P.FILES), text("archive", "archive name", ("bundle.zip", "old.zip",
                                                                                   "send.zip", "q3.zip"))),
      ("zip {paths} into {archive}", "compress {paths} as {archive}")),
)
FINANCE = (
    F("get_stock_price", "Latest price of a stock ticker.", "finance",
      (text("ticker", "ticker symbol", P.STOCKS),),
      ("What's {ticker} trading at?", "get the stock price of {ticker}")),
    F("transfer_money", "Transfer money to a person.", "finance",
      (made_up("recipient", "full name", person), number("amount", "", 5, 2000),
       choice("currency", "ISO code", ("EUR", "USD", "GBP"))),
      ("send {amount} {currency} to {recipient}", "transfer {amount} {currency} to {recipient}")),
)
FITNESS = (
    F("log_workout", "Record a workout.", "fitness",
      (choice("activity", "sport", ("running", "cycling", "swimming", "rowing")),
       integer("minutes", "duration", 10, 180), number("distance_km", "distance", 1, 60, "covering {} km", False)),
      ("log {minutes} minutes of {activity}", "I went {activity} for {minutes} minutes, log it.")),
)
BOOKS = (
    F("find_book", "Search the library catalogue.", "library",
      (text("title", "book title", P.BOOKS), flag("ebook", "e-book only", "as an e-book", "in print")),
      ("Does the library have {title}?", "look up the book {title}")),
    F("renew_loan", "Renew a borrowed book.", "library",
      (made_up("loan_id", "loan number", code("LN", 5)), integer("weeks", "extra weeks", 1, 4)),
      ("renew loan {loan_id} for {weeks} weeks", "extend {loan_id} by {weeks} weeks")),
)
RECIPES = (
    F("find_recipes", "Recipes that use given ingredients.", "recipes",
      (items("ingredients", "what is at hand", P.INGREDIENTS),
       integer("max_minutes", "time limit", 10, 90, "ready in under {} minutes", False)),
      ("What can I cook with {ingredients}?", "find recipes using {ingredients}")),
)
TASKS = (
    F("add_task", "Add a to-do item.", "tasks",
      (text("title", "task", ("pay rent", "water plants", "call the bank", "renew passport", "buy stamps")),
       choice("priority", "", ("low", "normal", "high"), "with {} priority", False),
       made_up("due", "YYYY-MM-DD", date, "due {}", False)),
      ("add a task to {title}", "remind me to {title}")),
    F("translate_text", "Translate text into another language.", "tasks",
      (text("text", "what to translate", ("good morning", "where is the station", "thank you very much",
                                          "the meeting is cancelled")),
       choice("language", "target language", P.LANGUAGES)),
      ("translate '{text}' into {language}", "How do you say '{text}' in {language}?")),
)
MAPS = (
    F("get_directions", "Route between two places.", "maps",
      (text("origin", "start", P.CITIES), text("destination", "end", P.CITIES),
       choice("mode", "how to travel", ("driving", "walking", "transit", "cycling"), "by {}", False)),
      ("directions from {origin} to {destination}", "How do I get from {origin} to {destination}?")),
)

# ---- held out: never seen in training ----
PETS = (
    F("book_vet_visit", "Book a vet appointment for a pet.", "pets",
      (text("pet_name", "the pet's name", P.PETS), choice("species", "animal", ("dog", "cat", "rabbit", "parrot")),
       made_up("day", "YYYY-MM-DD", date), flag("emergency", "urgent case", "as an emergency", "as a routine visit")),
      ("book a vet visit for {pet_name} the {species} on {day}", "my {species} {pet_name} needs the vet on {day}.")),
    F("log_pet_weight", "Record a pet's weight.", "pets",
      (text("pet_name", "the pet's name", P.PETS), number("kilograms", "weight", 1, 45)),
      ("log {pet_name}'s weight as {kilograms} kg", "{pet_name} weighs {kilograms} kg now, save that.")),
)
GARDEN = (
    F("water_schedule", "Set how often a plant is watered.", "garden",
      (text("plant", "", P.PLANTS), integer("every_days", "interval", 1, 14),
       integer("ml", "water per watering", 50, 900, "with {} ml", False)),
      ("water the {plant} every {every_days} days", "set the {plant} to be watered every {every_days} days")),
    F("identify_pest", "Identify a plant pest from symptoms.", "garden",
      (text("plant", "", P.PLANTS), choice("symptom", "what is seen", ("yellow leaves", "holes", "white spots",
                                                                          "sticky residue"))),
      ("my {plant} has {symptom}, what pest is it?", "identify the pest: {symptom} on the {plant}")),
)
SPORTS = (
    F("get_match_score", "Score of a team's latest match.", "sports",
      (text("team", "team name", P.TEAMS), choice("league", "", ("national", "regional", "youth"),
                                                 "in the {} league", False)),
      ("What was the score of the {team} game?", "get the latest {team} score")),
    F("buy_tickets", "Buy match tickets.", "sports",
      (text("team", "home team", P.TEAMS), integer("count", "tickets", 1, 8),
       choice("section", "seating", ("north", "south", "east", "west"), "in the {} stand", False)),
      ("buy {count} tickets for the {team} match", "get me {count} seats at the next {team} game")),
)
JOBS = (
    F("post_job", "Publish a job opening.", "jobs",
      (text("role", "job title", ("barista", "data analyst", "electrician", "nurse", "translator")),
       text("city", "location", P.CITIES), number("salary", "yearly salary", 20000, 90000, "paying {}", False),
       flag("remote", "remote allowed", "remote-friendly", "on-site only")),
      ("post a {role} job in {city}", "publish an opening for a {role} in {city}")),
    F("find_candidates", "Search candidates by skills.", "jobs",
      (items("skills", "skills needed", P.SKILLS), integer("min_years", "experience", 1, 10,
                                                          "with at least {} years of experience", False)),
      ("find candidates who know {skills}", "search for people skilled in {skills}")),
)
SHIPPING = (
    F("ship_parcel", "Send a parcel to an address.", "shipping",
      (record("recipient", "who and where", (made_up("name", "full name", person), text("city", "", P.CITIES),
                                               text("street", "", P.STREETS)),
              "{name}, {street}, {city}"),
       number("weight_kg", "parcel weight", 0.5, 30), flag("express", "next-day", "by express", "by standard post")),
      ("ship a {weight_kg} kg parcel to {recipient}", "send a parcel of {weight_kg} kg to {recipient}")),
    F("parcel_status", "Status of a parcel.", "shipping",
      (made_up("tracking", "tracking number", code("TRK", 6)),),
      ("Where is parcel {tracking}?", "check the status of parcel {tracking}")),
)

TRAIN_DOMAINS = (WEATHER, DINING, TRAVEL, SHOPPING, CALENDAR, MESSAGING, MUSIC, HOME, FILES, FINANCE, FITNESS,
                 BOOKS, RECIPES, TASKS, MAPS)
HELD_OUT_DOMAINS = (PETS, GARDEN, SPORTS, JOBS, SHIPPING)
