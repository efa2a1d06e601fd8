"""Stream agents (Faust) and the pure logic behind them."""
