"""Scoring: the official ISBI 2012 thinned V_rand / V_info, as the challenge's Fiji evaluation computes them."""
