"""The tools at the top: the bench dispatcher, the claim, replay of a finished session, screenshots;
they compose the stages and may ask the simulator for data."""
