"""Attacks and corrupted clients, as client behaviour (see :mod:`fedkit.attacks.base`).

Each attack is a frozen dataclass with its settings, registered in
:data:`fedkit.registry.ATTACKS` and chosen in the experiment file's ``[attack]`` table:

* ``none`` — :class:`~fedkit.attacks.base.Attack` itself: attackers behave honestly (a study's
  clean baseline in the same grid)
* ``label_flip`` — :class:`~fedkit.attacks.label_flip.LabelFlip` (Fang et al. 2020)
* ``sign_flip`` — :class:`~fedkit.attacks.sign_flip.SignFlip` (Damaskinos et al. 2018)
* ``ipm`` — inner-product manipulation (Xie et al. 2020): ``SignFlip`` with ``scale = ε = 0.1``
* ``gaussian_noise`` — :class:`~fedkit.attacks.gaussian.GaussianNoise` (Blanchard et al. 2017)
* ``backdoor`` — :class:`~fedkit.attacks.backdoor.Backdoor`, model replacement with a pixel
  trigger (Bagdasaryan et al. 2020), with backdoor accuracy as a metric
* ``alie`` — :class:`~fedkit.attacks.alie.ALittleIsEnough` (Baruch et al. 2019)
* ``label_noise``, ``input_noise`` — :mod:`fedkit.attacks.noisy`, corrupted but honest clients
"""

from fedkit.attacks.base import Attack, AttackContext, Attacked, attacked, choose_attackers

__all__ = ["Attack", "AttackContext", "Attacked", "attacked", "choose_attackers"]
