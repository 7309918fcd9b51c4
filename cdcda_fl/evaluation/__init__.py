"""How answers are scored: the LaMP metrics per task and the paired bootstrap intervals over users."""
