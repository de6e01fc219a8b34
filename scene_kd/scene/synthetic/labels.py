"""Class ids, names and constants of the synthetic scenes (urban block, tabletop)."""

from __future__ import annotations

ROAD, SIDEWALK, BUILDING, TREE, CAR, POLE, GRASS = range(7)
URBAN_CLASSES: dict[int, str] = {
    ROAD: "road", SIDEWALK: "sidewalk", BUILDING: "building", TREE: "tree", CAR: "car", POLE: "pole", GRASS: "grass",
}
URBAN_THINGS = (BUILDING, TREE, CAR, POLE)  # classes with instances; the rest are stuff (instance -1)

TABLE, MUG, BOWL, BOX, BOTTLE, BANANA, MUG_HANDLE = range(7)
TABLETOP_CLASSES: dict[int, str] = {
    TABLE: "table", MUG: "mug", BOWL: "bowl", BOX: "box", BOTTLE: "bottle", BANANA: "banana",
    MUG_HANDLE: "mug handle",
}

DEFAULT_URBAN_ORIGIN = (870200.0, 6617080.0, 30.0)  # a UTM-like offset (e.g. Lambert-93 metres)
SCANNER_AIRBORNE, SCANNER_MOBILE = 0, 1

# part codes (what a primitive is made of; drives colour and intensity)
_GROUND, _FACADE, _CAR_BODY, _CAR_CABIN, _WHEEL, _TRUNK, _CROWN, _METAL, _LAMP, _SIGN = range(10)
