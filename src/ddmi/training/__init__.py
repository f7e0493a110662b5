"""Training: one trainer on accelerate, the stage-1 task (plain and adversarial), the stage-2 LDM task, EMA."""
