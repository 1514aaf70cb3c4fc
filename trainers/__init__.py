"""Trainers: consumers of the triplet topic (APO, SFT, RL) that publish new resource versions."""
