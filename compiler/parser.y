/* parser.y: the grammar of .lm files. Each action is one call to an
 * ast_* builder; imports are resolved by parse.c after the parse. */
%define api.pure full
%define api.location.type {Loc}
%define parse.error detailed
%locations
%expect 0
%lex-param {void *scanner}
%parse-param {void *scanner} {Parser *P}

%code top {
/* the parser's stack grows in the compilation's arena: a syntax error
 * unwinds (longjmp) past yyparse, which then cannot free it */
#define YYMALLOC(n) arena_alloc(n)
#define YYFREE(p) ((void)(p))
}
%code requires {
#include "lmc.h"
}
%code provides {
int yylex(YYSTYPE *lval, Loc *lloc, void *scanner);
void yyerror(Loc *loc, void *scanner, Parser *P, const char *msg);
#define YYLLOC_DEFAULT(Cur, Rhs, N) do { \
  if (N) { (Cur) = YYRHSLOC(Rhs, 1); (Cur).end_line = YYRHSLOC(Rhs, N).end_line; \
           (Cur).end_col = YYRHSLOC(Rhs, N).end_col; } \
  else { (Cur) = YYRHSLOC(Rhs, 0); (Cur).line = (Cur).end_line; (Cur).col = (Cur).end_col; } \
} while (0)
}

%union { Node *node; const char *str; }

%token IMPORT "import" MODEL "model" BLOCK "block" PARAM "param" DIM "dim"
%token LAYERS "layers" RETURN "return" PARALLEL "parallel" TRAIN "train"
%token LAYOUT "layout" INIT "init"
%token <str> IDENT "identifier" NUMBER "number" STRING "string"

%type <node> items item stmts stmt dimdefs dimdef pdecls pdecl names name
%type <node> expr args arg exprs settings setting rules rule initopt

%left '+' '-'
%left '*' '/'
%precedence NEG

%%
program: items                         { P->items = $1; }
items: %empty                          { $$ = NULL; }
     | items item                      { $$ = ast_append($1, $2); }
item: "import" STRING                  { $$ = ast_import(@$, ast_str(@2, $2)); }
    | "import" STRING ';'              { $$ = ast_import(@$, ast_str(@2, $2)); }
    | "model" name '{' stmts '}'       { $$ = ast_model(@$, $2, $4); }
    | "block" name '(' names ')' '{' stmts '}' { $$ = ast_block(@$, $2, $4, $7); }
    | "parallel" '{' settings '}'      { $$ = ast_section(@$, N_PARALLEL, $3); }
    | "train" '{' settings '}'         { $$ = ast_section(@$, N_TRAIN, $3); }
stmts: %empty                          { $$ = NULL; }
     | stmts stmt                      { $$ = ast_append($1, $2); }
stmt: "dim" dimdefs ';'                { $$ = $2; }
    | "param" pdecls ';'               { $$ = $2; }
    | name '=' expr ';'                { $$ = ast_assign(@$, $1, $3); }
    | "layers" name '=' expr '{' stmts '}' { $$ = ast_layers(@$, $2, $4, $6); }
    | "return" expr ';'                { $$ = ast_return(@$, $2); }
dimdefs: dimdef                        { $$ = $1; }
       | dimdefs ',' dimdef            { $$ = ast_append($1, $3); }
dimdef: name '=' expr                  { $$ = ast_dim(@$, $1, $3); }
pdecls: pdecl                          { $$ = $1; }
      | pdecls ',' pdecl               { $$ = ast_append($1, $3); }
pdecl: name '[' names ']' initopt      { $$ = ast_param(@$, $1, $3, $5); }
initopt: %empty                        { $$ = NULL; }
       | "init" expr                   { $$ = $2; }
names: %empty                          { $$ = NULL; }
     | name                            { $$ = $1; }
     | names ',' name                  { $$ = ast_append($1, $3); }
name: IDENT                            { $$ = ast_ident(@$, $1); }
expr: NUMBER                           { $$ = ast_num(@$, $1); }
    | STRING                           { $$ = ast_str(@$, $1); }
    | name                             { $$ = $1; }
    | name '(' args ')'                { $$ = ast_call(@$, $1, $3); }
    | '(' expr ')'                     { $$ = $2; }
    | '(' expr ',' exprs ')'           { $$ = ast_tuple(@$, ast_append($2, $4)); }
    | '-' expr %prec NEG               { $$ = ast_neg(@$, $2); }
    | expr '+' expr                    { $$ = ast_binop(@$, '+', $1, $3); }
    | expr '-' expr                    { $$ = ast_binop(@$, '-', $1, $3); }
    | expr '*' expr                    { $$ = ast_binop(@$, '*', $1, $3); }
    | expr '/' expr                    { $$ = ast_binop(@$, '/', $1, $3); }
exprs: expr                            { $$ = $1; }
     | exprs ',' expr                  { $$ = ast_append($1, $3); }
args: %empty                           { $$ = NULL; }
    | arg                              { $$ = $1; }
    | args ',' arg                     { $$ = ast_append($1, $3); }
arg: expr                              { $$ = $1; }
   | name '=' expr                     { $$ = ast_kwarg(@$, $1, $3); }
settings: %empty                       { $$ = NULL; }
        | settings setting             { $$ = ast_append($1, $2); }
setting: name '=' expr ';'             { $$ = ast_setting(@$, $1, $3); }
       | "layout" rules ';'            { $$ = ast_layout(@$, $2); }
rules: rule                            { $$ = $1; }
     | rules ',' rule                  { $$ = ast_append($1, $3); }
rule: name ':' name                    { $$ = ast_kwarg(@$, $1, $3); }
%%
