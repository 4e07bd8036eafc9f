"""The console's forms: Flask-WTF adds and checks each one's CSRF token."""
from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, PasswordField, SelectField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from console.accounts import MIN_PASSWORD_LENGTH, ROLES


class LoginForm(FlaskForm):
    email = EmailField(_l("Email"), validators=[DataRequired(), Length(max=254)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=1024)])
    next = HiddenField()


class PasswordForm(FlaskForm):
    current = PasswordField(_l("Current password"), validators=[DataRequired(), Length(max=1024)])
    new = PasswordField(_l("New password"), validators=[DataRequired(), Length(min=MIN_PASSWORD_LENGTH, max=1024)])
    repeat = PasswordField(_l("New password again"),
                           validators=[DataRequired(), EqualTo("new", message=_l("The two new passwords differ."))])


class UserForm(FlaskForm):
    email = EmailField(_l("Email"), validators=[DataRequired(), Length(max=254)])
    role = SelectField(_l("Role"), choices=list(ROLES), default=ROLES[0])


class LanguageForm(FlaskForm):
    lang = StringField(validators=[DataRequired()])
    next = HiddenField()
