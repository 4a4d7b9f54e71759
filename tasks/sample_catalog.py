"""A realistic synthetic product catalog for demos and tests (handcrafted vocabulary, no external data).

``write_sample_catalog(out_path=..., n=3000, seed=0)`` writes a CSV with columns
``item_id, title, brand, categories, description, price``. Ten top-level
categories, each with subcategories and leaf categories, brands per top
category, and titles/descriptions composed from category-specific words, so
semantic IDs can be seen to group similar items. Deterministic for a given
``(n, seed)``; ids are ``P000000``, ``P000001``, ...
"""

from __future__ import annotations

import csv
import io
import random

from tasks import storage

# top -> (brands, {sub: {leaf: (nouns, attributes)}}, adjectives, price range)
_CATALOG: dict[str, dict] = {
    "Beauty": {
        "brands": ["Lumière", "Velvet Rose", "PureGlow", "Maison Aube", "Coral Bay", "Nordic Skin"],
        "adjectives": ["long-lasting", "hydrating", "matte", "radiant", "vegan", "fragrance-free", "silky"],
        "price": (4.0, 90.0),
        "subs": {
            "Makeup": {
                "Lipstick": (["Lipstick", "Lip Color", "Lip Crayon"], ["Ruby Red", "Nude Beige", "Berry", "Coral", "Mauve"]),
                "Foundation": (["Foundation", "BB Cream", "Tinted Moisturizer"], ["Light", "Medium", "Deep", "SPF 15", "30 ml"]),
                "Mascara": (["Mascara", "Lash Primer"], ["Volumizing", "Waterproof", "Lengthening", "Black", "Brown"]),
            },
            "Skin Care": {
                "Moisturizers": (["Face Cream", "Night Cream", "Gel Moisturizer"], ["50 ml", "with Hyaluronic Acid", "for Dry Skin", "SPF 30"]),
                "Cleansers": (["Foaming Cleanser", "Cleansing Balm", "Micellar Water"], ["200 ml", "for Oily Skin", "Gentle", "with Green Tea"]),
            },
            "Hair Care": {
                "Shampoo": (["Shampoo", "Clarifying Shampoo", "Dry Shampoo"], ["400 ml", "for Curly Hair", "Sulfate-Free", "Argan Oil"]),
                "Conditioner": (["Conditioner", "Leave-In Conditioner", "Hair Mask"], ["250 ml", "Repairing", "Coconut", "for Fine Hair"]),
            },
        },
    },
    "Electronics": {
        "brands": ["Sonora", "Voltix", "AeroSound", "Kestrel", "Pixelon", "Northwave"],
        "adjectives": ["wireless", "compact", "high-fidelity", "noise-cancelling", "portable", "smart", "rugged"],
        "price": (15.0, 900.0),
        "subs": {
            "Audio": {
                "Headphones": (["Over-Ear Headphones", "On-Ear Headphones", "Studio Headphones"], ["Bluetooth 5.3", "40h Battery", "Black", "Foldable"]),
                "Earbuds": (["True Wireless Earbuds", "Sport Earbuds"], ["IPX5", "Charging Case", "White", "Low Latency"]),
                "Speakers": (["Bluetooth Speaker", "Soundbar", "Bookshelf Speakers"], ["20W", "Waterproof", "Stereo Pair", "with Subwoofer"]),
            },
            "Computers": {
                "Laptops": (["Laptop", "Ultrabook", "2-in-1 Laptop"], ["14 inch", "16GB RAM", "512GB SSD", "Backlit Keyboard"]),
                "Monitors": (["Monitor", "Gaming Monitor", "Ultrawide Monitor"], ["27 inch", "4K", "144Hz", "USB-C"]),
            },
            "Cameras": {
                "Action Cameras": (["Action Camera", "Helmet Camera"], ["4K60", "Image Stabilization", "Waterproof Case"]),
                "Mirrorless": (["Mirrorless Camera", "Camera Body"], ["24MP", "Full Frame", "with 18-55mm Lens"]),
            },
        },
    },
    "Books": {
        "brands": ["Harbor House", "Quill & Lantern", "Northfield Press", "Blue Heron Books", "Meridian"],
        "adjectives": ["gripping", "award-winning", "bestselling", "haunting", "illustrated", "timeless"],
        "price": (5.0, 45.0),
        "subs": {
            "Fiction": {
                "Mystery": (["Mystery Novel", "Detective Novel", "Whodunit"], ["Paperback", "Hardcover", "Book 1 of the Series"]),
                "Science Fiction": (["Space Opera", "Science Fiction Novel", "Dystopian Novel"], ["Paperback", "Hardcover", "Collector's Edition"]),
                "Romance": (["Romance Novel", "Historical Romance"], ["Paperback", "Large Print", "Book 2 of the Series"]),
            },
            "Nonfiction": {
                "History": (["History of Rome", "World War II Chronicle", "Biography"], ["Hardcover", "Illustrated Edition", "Paperback"]),
                "Cooking": (["Cookbook", "Baking Book", "Vegetarian Cookbook"], ["Hardcover", "Spiral-Bound", "100 Recipes"]),
            },
            "Children's Books": {
                "Picture Books": (["Picture Book", "Bedtime Story"], ["Board Book", "Ages 3-5", "Hardcover"]),
            },
        },
    },
    "Kitchen": {
        "brands": ["Ironhearth", "Cucina Verde", "Blue Flame", "Oakridge", "ChefLine"],
        "adjectives": ["nonstick", "stainless", "dishwasher-safe", "heavy-duty", "professional", "oven-safe"],
        "price": (8.0, 350.0),
        "subs": {
            "Cookware": {
                "Pans": (["Frying Pan", "Skillet", "Saute Pan", "Wok"], ["10 inch", "12 inch", "Cast Iron", "Induction Ready"]),
                "Pots": (["Stock Pot", "Dutch Oven", "Saucepan"], ["5 Quart", "Enameled", "with Glass Lid"]),
            },
            "Appliances": {
                "Blenders": (["Blender", "Personal Blender", "Immersion Blender"], ["1200W", "64 oz Jar", "6 Speeds"]),
                "Coffee Makers": (["Coffee Maker", "Espresso Machine", "French Press"], ["12 Cup", "Programmable", "Milk Frother"]),
            },
            "Cutlery": {
                "Knives": (["Chef's Knife", "Santoku Knife", "Knife Set"], ["8 inch", "Damascus Steel", "with Block"]),
            },
        },
    },
    "Sports": {
        "brands": ["Stridex", "Summit Peak", "AquaLine", "Trailhawk", "Corefit"],
        "adjectives": ["lightweight", "breathable", "durable", "cushioned", "quick-dry", "ergonomic"],
        "price": (10.0, 250.0),
        "subs": {
            "Running": {
                "Shoes": (["Running Shoes", "Trail Running Shoes", "Racing Flats"], ["Men's", "Women's", "Size 9", "Wide Fit"]),
                "Apparel": (["Running Shorts", "Running Jacket", "Compression Tights"], ["Reflective", "Medium", "Large"]),
            },
            "Fitness": {
                "Yoga": (["Yoga Mat", "Yoga Block", "Yoga Strap"], ["6 mm", "Non-Slip", "Cork", "Extra Long"]),
                "Weights": (["Dumbbell Set", "Kettlebell", "Adjustable Dumbbells"], ["20 lb", "Rubber Coated", "Pair"]),
            },
            "Cycling": {
                "Helmets": (["Bike Helmet", "Road Helmet", "MTB Helmet"], ["MIPS", "Medium", "with Visor"]),
            },
        },
    },
    "Toys": {
        "brands": ["Brickland", "Tiny Tinker", "Funforge", "Puzzlewood", "Starboard Toys"],
        "adjectives": ["educational", "colorful", "award-winning", "classic", "creative", "interactive"],
        "price": (6.0, 120.0),
        "subs": {
            "Building Sets": {
                "Construction": (["Building Set", "Castle Set", "Robot Kit"], ["500 Pieces", "Ages 8+", "Motorized"]),
            },
            "Games": {
                "Board Games": (["Board Game", "Strategy Game", "Family Game"], ["2-4 Players", "Ages 10+", "60 Minutes"]),
                "Puzzles": (["Jigsaw Puzzle", "3D Puzzle"], ["1000 Pieces", "Landscape", "Ages 12+"]),
            },
            "Dolls": {
                "Plush": (["Plush Bear", "Stuffed Bunny", "Plush Dragon"], ["12 inch", "Super Soft", "Machine Washable"]),
            },
        },
    },
    "Home": {
        "brands": ["Linen & Loom", "Casa Calma", "Northlight", "Hearthstone", "Willow Lane"],
        "adjectives": ["cozy", "minimalist", "handwoven", "modern", "rustic", "hypoallergenic"],
        "price": (9.0, 400.0),
        "subs": {
            "Bedding": {
                "Sheets": (["Sheet Set", "Fitted Sheet", "Duvet Cover"], ["Queen", "King", "400 Thread Count", "Linen"]),
                "Pillows": (["Pillow", "Memory Foam Pillow", "Body Pillow"], ["Standard", "Set of 2", "Cooling"]),
            },
            "Lighting": {
                "Lamps": (["Table Lamp", "Floor Lamp", "Desk Lamp"], ["LED", "Dimmable", "Brass", "USB Port"]),
            },
            "Decor": {
                "Candles": (["Scented Candle", "Pillar Candle", "Candle Set"], ["Lavender", "Vanilla", "40h Burn", "Soy Wax"]),
                "Rugs": (["Area Rug", "Runner Rug"], ["5x7", "Washable", "Wool", "Geometric"]),
            },
        },
    },
    "Garden": {
        "brands": ["GreenThumb", "Fernway", "Bloomfield", "TerraPro", "Rainleaf"],
        "adjectives": ["weatherproof", "heavy-duty", "organic", "rust-resistant", "expandable", "solar"],
        "price": (5.0, 300.0),
        "subs": {
            "Tools": {
                "Hand Tools": (["Pruning Shears", "Garden Trowel", "Hand Rake"], ["Ergonomic Grip", "Steel", "Set of 3"]),
                "Watering": (["Garden Hose", "Hose Nozzle", "Watering Can"], ["50 ft", "8 Patterns", "2 Gallon"]),
            },
            "Plants": {
                "Seeds": (["Tomato Seeds", "Herb Seed Kit", "Wildflower Seeds"], ["Heirloom", "Non-GMO", "500 Seeds"]),
            },
            "Outdoor Living": {
                "Lighting": (["Solar Path Lights", "String Lights"], ["Pack of 8", "Warm White", "48 ft"]),
            },
        },
    },
    "Pet Supplies": {
        "brands": ["Pawsome", "Whisker & Co", "TailWag", "Furlong", "Happy Hound"],
        "adjectives": ["grain-free", "chew-resistant", "washable", "orthopedic", "natural", "adjustable"],
        "price": (4.0, 150.0),
        "subs": {
            "Dogs": {
                "Dog Food": (["Dry Dog Food", "Puppy Food", "Dog Treats"], ["Chicken & Rice", "15 lb Bag", "Salmon"]),
                "Dog Toys": (["Chew Toy", "Rope Toy", "Squeaky Ball"], ["Large Breeds", "Pack of 3", "Durable Rubber"]),
                "Dog Beds": (["Dog Bed", "Bolster Bed"], ["Large", "Memory Foam", "Removable Cover"]),
            },
            "Cats": {
                "Cat Litter": (["Clumping Litter", "Litter Box"], ["20 lb", "Unscented", "Self-Cleaning"]),
                "Cat Toys": (["Feather Wand", "Catnip Mouse", "Scratching Post"], ["Set of 5", "Sisal", "Interactive"]),
            },
        },
    },
    "Grocery": {
        "brands": ["Harvest Table", "Mountain Bean", "Golden Grove", "Sea Salt & Co", "Orchard Lane"],
        "adjectives": ["organic", "fair-trade", "gluten-free", "small-batch", "artisan", "low-sugar"],
        "price": (2.0, 40.0),
        "subs": {
            "Beverages": {
                "Coffee": (["Whole Bean Coffee", "Ground Coffee", "Cold Brew"], ["Dark Roast", "12 oz", "Single Origin Colombia"]),
                "Tea": (["Green Tea", "Earl Grey Tea", "Herbal Tea"], ["20 Bags", "Loose Leaf", "Decaf"]),
            },
            "Snacks": {
                "Chips": (["Potato Chips", "Tortilla Chips", "Veggie Crisps"], ["Sea Salt", "Family Size", "Pack of 6"]),
                "Chocolate": (["Dark Chocolate Bar", "Chocolate Truffles"], ["70% Cacao", "Sea Salt Caramel", "Gift Box"]),
            },
            "Pantry": {
                "Pasta": (["Spaghetti", "Penne", "Fusilli"], ["1 lb", "Whole Wheat", "Bronze Cut"]),
            },
        },
    },
}

_SENTENCES = [
    "A {adj} {noun_l} from {brand}, made for everyday use.",
    "This {adj} {noun_l} combines quality and value in the {leaf_l} range.",
    "{brand} designed this {noun_l} to be {adj} and easy to love.",
    "Our {adj} {noun_l} is a customer favourite in {sub_l}.",
    "Crafted by {brand}, the {noun_l} is {adj} and built to last.",
]
_EXTRAS = [
    "Features: {attr}.",
    "Available with {attr}.",
    "Ideal as a gift.",
    "Backed by a one-year warranty.",
    "Ships in recyclable packaging.",
    "",
]

COLUMNS = ["item_id", "title", "brand", "categories", "description", "price"]


def _leaves() -> list[tuple[str, str, str, list[str], list[str]]]:
    out = []
    for top, spec in _CATALOG.items():
        for sub, leaves in spec["subs"].items():
            for leaf, (nouns, attrs) in leaves.items():
                out.append((top, sub, leaf, nouns, attrs))
    return out


def generate_rows(*, n: int = 3000, seed: int = 0) -> list[dict[str, str]]:
    """The catalog rows as dicts of strings (deterministic for ``(n, seed)``)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    leaves = _leaves()
    rows = []
    for i in range(n):
        top, sub, leaf, nouns, attrs = leaves[rng.randrange(len(leaves))]
        spec = _CATALOG[top]
        brand = rng.choice(spec["brands"])
        adj = rng.choice(spec["adjectives"])
        noun = rng.choice(nouns)
        chosen = rng.sample(attrs, k=min(len(attrs), rng.randint(1, 2)))
        title = f"{brand} {adj.title() if rng.random() < 0.5 else adj.capitalize()} {noun}"
        if chosen:
            title += ", " + ", ".join(chosen)
        fmt = {"adj": adj, "noun_l": noun.lower(), "brand": brand, "leaf_l": leaf.lower(), "sub_l": sub.lower()}
        desc = rng.choice(_SENTENCES).format(**fmt)
        extra = rng.choice(_EXTRAS).format(attr=rng.choice(attrs).lower())
        if extra:
            desc += " " + extra
        lo, hi = spec["price"]
        price = round(lo + (hi - lo) * rng.random() ** 2, 2)  # skewed towards cheap, like real catalogs
        rows.append(
            {
                "item_id": f"P{i:06d}",
                "title": title,
                "brand": brand,
                "categories": f"{top} > {sub} > {leaf}",
                "description": desc,
                "price": f"{price:.2f}",
            }
        )
    return rows


def write_sample_catalog(*, out_path: str, n: int = 3000, seed: int = 0) -> int:
    """Write ``n`` synthetic products as CSV to ``out_path`` (local or s3://); return ``n``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(generate_rows(n=n, seed=seed))
    storage.write_bytes(out_path, buf.getvalue().encode("utf-8"))
    return n
