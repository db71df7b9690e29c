"""A tiny name -> class registry: one per kind of swappable part (samplers, target kinds,
predictors, losses).

Each registered class is a pydantic model (a :class:`~bootleg.schema.Strict` section) whose
discriminator field is a ``Literal`` of its name; it owns its parameters, their validation and
a ``build(...)`` method for the runtime object. The config section is the registry's
:meth:`Registry.union` (a discriminated union), and the CLI choices, the flows' forms and the
ablation variants read :meth:`Registry.names`; nothing lists the names by hand elsewhere.

    SAMPLERS = Registry("masking", "sampler")

    @SAMPLERS.register
    class RandomParams(Strict):
        sampler: Literal["random"] = "random"
        mask_ratio: tuple[float, float] = (0.75, 0.75)
        def build(self, grid): ...
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar, Union, get_args

from pydantic import BaseModel, Field

T = TypeVar("T", bound=type[BaseModel])


class Registry(Generic[T]):
    """Registered classes of one kind, keyed by the default of their discriminator field."""

    def __init__(self, section: str, key: str) -> None:
        self.section, self.key = section, key
        self._classes: dict[str, type[BaseModel]] = {}

    def register(self, cls: T) -> T:
        field = cls.model_fields.get(self.key)
        if field is None or not get_args(field.annotation):
            raise TypeError(f"{cls.__name__}: needs a Literal field {self.key!r} to be registered in {self.section}")
        (name,) = get_args(field.annotation)
        if name in self._classes and self._classes[name] is not cls:
            raise TypeError(f"{self.section}: {name!r} is registered twice")
        self._classes[name] = cls
        return cls

    def names(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def get(self, name: str) -> type[BaseModel]:
        try:
            return self._classes[name]
        except KeyError:
            raise KeyError(
                f"{self.section}.{self.key}: {name!r} is unknown; expected one of {', '.join(self._classes)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self):  # noqa: ANN204
        return iter(self._classes.items())

    def union(self) -> Any:
        """The discriminated union of every registered class (a pydantic field type)."""
        classes = tuple(self._classes.values())
        if len(classes) == 1:
            return classes[0]
        return Annotated[Union[classes], Field(discriminator=self.key)]  # noqa: UP007

    def default(self, name: str, **values: Any) -> BaseModel:
        """An instance of ``name``'s class with its defaults (and ``values``)."""
        return self.get(name)(**values)
